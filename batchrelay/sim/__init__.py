"""The provider simulator: a fake OpenAI/Anthropic-compatible provider with fault injection, for
tests, benchmarks and the demo. It is a provider, not part of the queue: it imports nothing of the core."""
