-- Per-tenant webhooks (DESIGN.md §1, the seed's notification service): task events POSTed to
-- a tenant's URLs, signed with the hook's secret, retried with backoff.

create table webhooks (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null references tenants(id) on delete cascade,
    url text not null,
    -- The HMAC key. Kept as given, not hashed: signing needs the key itself, as with Stripe's
    -- and GitHub's webhook secrets. The API shows it once, in the answer to the create.
    secret text not null,
    -- The task statuses to deliver; null delivers every event.
    events text[],
    description text,
    active boolean not null default true,
    -- Who registered it; the hook outlives a deleted user.
    created_by uuid references users(id) on delete set null,
    created_at timestamp with time zone not null default now(),

    constraint webhooks_url_length check (length(url) between 1 and 2048)
);
create index idx_webhooks_tenant on webhooks (tenant_id, created_at);

-- One row per (hook, event): what was sent and how it went, so an operator can see failures.
-- Deleting the hook deletes its history; the notifier stops calling a deleted hook.
create table webhook_deliveries (
    id uuid primary key default gen_random_uuid(),
    webhook_id uuid not null references webhooks(id) on delete cascade,
    tenant_id uuid not null references tenants(id) on delete cascade,
    -- The Redis stream id of the task event: redelivering the same stream entry (a notifier
    -- that died before acknowledging it) finds this row instead of making a second one.
    event_id varchar(64) not null,
    task_id uuid not null,
    event_status varchar(50) not null,
    -- The exact body sent, so every attempt signs and sends the same bytes.
    payload text not null,
    status varchar(20) not null default 'pending',
    attempts integer not null default 0,
    last_status_code integer,
    last_error text,
    next_attempt_at timestamp with time zone,
    created_at timestamp with time zone not null default now(),
    updated_at timestamp with time zone not null default now(),
    delivered_at timestamp with time zone,

    constraint webhook_deliveries_status_check check (status in ('pending', 'delivered', 'failed')),
    constraint webhook_deliveries_event_unique unique (webhook_id, event_id)
);
create index idx_webhook_deliveries_hook on webhook_deliveries (webhook_id, created_at desc);
-- Pruning finished deliveries past their retention.
create index idx_webhook_deliveries_finished on webhook_deliveries (created_at) where status <> 'pending';
