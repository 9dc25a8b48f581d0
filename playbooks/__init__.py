"""Response to findings: alert routes and actions."""
