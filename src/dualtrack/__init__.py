"""dualtrack: telemetry and adaptation for LLM applications that route between
a local model and an API model."""

__version__ = "0.1.0"
