//! SQL that more than one role runs against the same rows, kept once. Constants only: the
//! roles run them; this crate still does no I/O.

/// Gives a tenant one unlimited row per quota kind, if it lacks them. `$1` = tenant id.
pub const ENSURE_QUOTA_ROWS: &str = "insert into resource_quotas (tenant_id, resource_type, hard_limit, used_amount)
     select $1, k.kind, 9223372036854775807, 0 from (values ('cpu'), ('memory'), ('gpu'), ('tasks')) k(kind)
     on conflict (tenant_id, resource_type) do nothing";

/// Returns the quota that terminal tasks still hold, exactly once per task: `quota_charged`
/// flips in the same statement. `$1` = one task id, or null to sweep every terminal task
/// (the reconciler's repair). Run it after the task's terminal status is written, in the
/// same transaction.
pub const RELEASE_QUOTA: &str = "with t as (
        update tasks set quota_charged = false
        where quota_charged and status in ('succeeded', 'failed', 'cancelled') and ($1::uuid is null or id = $1)
        returning tenant_id, quota_cpu, quota_memory, quota_gpu),
     r as (
        select tenant_id, v.kind, sum(v.amount) as amount
        from t cross join lateral (values ('cpu', t.quota_cpu), ('memory', t.quota_memory), ('gpu', t.quota_gpu), ('tasks', 1::bigint)) v(kind, amount)
        group by tenant_id, v.kind),
     -- Quota rows are locked in (tenant, kind) order, as admission locks them, so the two
     -- never deadlock.
     l as (
        select q.id from resource_quotas q join r on q.tenant_id = r.tenant_id and q.resource_type = r.kind
        order by q.tenant_id, q.resource_type for update of q)
     update resource_quotas q set used_amount = greatest(coalesce(q.used_amount, 0) - r.amount, 0), updated_at = now()
     from r where q.tenant_id = r.tenant_id and q.resource_type = r.kind and q.id in (select id from l)";
