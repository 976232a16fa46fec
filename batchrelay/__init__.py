"""batchrelay: bulk JSONL LLM requests through Redis and arq workers to cheap, unreliable providers."""

__version__ = "0.1.0"
