"""The arq worker: chunk jobs, the consumer pool and the per-line relay across providers."""
