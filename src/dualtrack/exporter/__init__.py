"""The instrumentation half: what runs inside the router process."""
