"""Online detectors: pure computation over events, no I/O."""
