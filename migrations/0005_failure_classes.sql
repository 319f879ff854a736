-- Failure classes (DESIGN.md §7): retries that did not count against max_retry_count (a lost
-- node, an eviction), so that current_retry_count stays the attempt number; and each failed
-- attempt's class.
alter table tasks add column free_retries integer not null default 0;
alter table task_executions add column failure_class varchar(32);
