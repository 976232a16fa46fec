"""Everything that lives in Redis: keys, connections, the batch store, queue and sweeper, lifecycle,
shared provider health, budgets, schedules, the webhook outbox. The only package that talks to Redis."""
