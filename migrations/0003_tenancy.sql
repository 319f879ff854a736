-- Tenancy and sessions, for the full REST API.

-- Fair-share weight of a tenant (DRF divides a tenant's dominant share by it).
alter table tenants add column weight integer not null default 1;
alter table tenants add constraint tenants_weight_check check (weight between 1 and 1000);

-- A refresh token is rotated once: presenting it again after rotation is a reuse, which
-- revokes its whole family.
alter table refresh_tokens add column rotated_at timestamp with time zone;
create index idx_refresh_tokens_user on refresh_tokens(user_id);

-- Quota admission (DESIGN.md §4): what each task charged to its tenant's quota, so the
-- release subtracts exactly that, once (quota_charged goes false in the same statement).
alter table tasks add column quota_charged boolean not null default false;
alter table tasks add column quota_cpu bigint not null default 0;
alter table tasks add column quota_memory bigint not null default 0;
alter table tasks add column quota_gpu bigint not null default 0;

-- Every tenant has one row per quota kind; "unlimited" is the largest bigint because the
-- seed's hard_limit is not null. Tasks admitted before this migration were never charged.
insert into resource_quotas (tenant_id, resource_type, hard_limit, used_amount)
select t.id, k.kind, 9223372036854775807, 0
from tenants t cross join (values ('cpu'), ('memory'), ('gpu'), ('tasks')) k(kind)
on conflict (tenant_id, resource_type) do nothing;
