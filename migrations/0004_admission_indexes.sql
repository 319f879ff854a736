-- Every admission writes each index on tasks, and a tenant's admissions queue behind one
-- another on its quota rows, so an index no query uses costs throughput directly.
-- idx_tasks_tenant_id is the leading column of idx_tasks_tenant_created (0002), which serves
-- every tenant-scoped query; idx_tasks_created_at serves none (lists are tenant-scoped, the
-- reconciler walks pending tasks through idx_tasks_status).
drop index if exists idx_tasks_tenant_id;
drop index if exists idx_tasks_created_at;
