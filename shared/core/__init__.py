"""The pure domain: telemetry schema, events, preparation, windows, risk and alert policy (pandas/numpy, no I/O)."""
