-- The seed's TimeoutSeconds: how long one attempt may run before it is stopped
-- (DeadlineExceeded). Null: the executor's executor.default_timeout (the seed's 1 hour).
alter table tasks add column timeout_seconds integer check (timeout_seconds is null or timeout_seconds > 0);
