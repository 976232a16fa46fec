"""Everything that lives in Redis: keys, connections, the batch store, queue and sweeper, lifecycle,
shared provider health, budgets, schedules, the webhook outbox. The only package that talks to Redis
(tests/test_store_boundary.py holds the rest of batchrelay to that): a batch's statuses are named in
status.py, and every multi-key change is a Lua script in lua/, called through scripts.py."""
