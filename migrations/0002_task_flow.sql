-- What the walking skeleton's flow adds to the seed schema.

-- The node the current (or last) attempt was bound to, and when a pending retry may run.
alter table tasks add column node_name varchar(255);
alter table tasks add column not_before timestamp with time zone;

-- One execution row per attempt; (task_id, attempt) makes recording an attempt idempotent,
-- which at-least-once bindings need.
alter table task_executions add column attempt integer not null default 0;
create unique index task_executions_task_attempt_unique on task_executions(task_id, attempt);

-- The task list's common query: a tenant's tasks, newest first, optionally by status.
create index idx_tasks_tenant_created on tasks(tenant_id, created_at desc, id);

-- Refresh tokens, stored as SHA-256 hashes. A family is one login's chain of rotations:
-- presenting a rotated token revokes the whole family.
create table refresh_tokens (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references users(id) on delete cascade,
    family_id uuid not null,
    token_hash bytea not null unique,
    expires_at timestamp with time zone not null,
    revoked_at timestamp with time zone,
    created_at timestamp with time zone not null default now()
);
create index idx_refresh_tokens_family on refresh_tokens(family_id);
