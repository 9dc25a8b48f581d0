"""mlwatchd's process: Kafka I/O, lifecycle, CLI, settings, metrics."""
