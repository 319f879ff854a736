-- Failure classes (DESIGN.md §7): retries that did not count against max_retry_count (a lost
-- node, an eviction), so that current_retry_count stays the attempt number; and each failed
-- attempt's class.
alter table tasks add column free_retries integer not null default 0;
alter table task_executions add column failure_class varchar(32);

-- Dead letters: a task that failed for good (retries exhausted, or a class not retried) is
-- in its tenant's dead letters until it is replayed (POST /v1/tasks/{id}/retry) or deleted.
alter table tasks add column dead_lettered_at timestamp with time zone;
create index idx_tasks_dead_letters on tasks (tenant_id, dead_lettered_at desc) where dead_lettered_at is not null;
