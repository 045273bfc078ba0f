"""realtime-llm: a WebSocket-first backend for LLM chat applications."""

__version__ = "0.1.0"
