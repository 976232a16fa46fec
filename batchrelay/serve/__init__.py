"""`batchrelay serve`: the OpenAI- and Anthropic-compatible batch HTTP API."""
