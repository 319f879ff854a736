-- The seed design's schema (platform-design.zh.md §3.1.1), unchanged.

create table tenants (
    id uuid primary key default gen_random_uuid(),
    name varchar(255) not null unique,
    display_name varchar(255) not null,
    description text,
    status varchar(50) not null default 'active',
    quota_config jsonb not null default '{}',
    created_at timestamp with time zone default now(),
    updated_at timestamp with time zone default now(),
    created_by uuid,

    constraint tenants_status_check check (status in ('active', 'suspended', 'deleted'))
);

create table users (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null references tenants(id) on delete cascade,
    username varchar(255) not null,
    email varchar(255) not null,
    password_hash varchar(255) not null,
    full_name varchar(255),
    role varchar(50) not null default 'user',
    status varchar(50) not null default 'active',
    last_login_at timestamp with time zone,
    created_at timestamp with time zone default now(),
    updated_at timestamp with time zone default now(),

    constraint users_username_tenant_unique unique (tenant_id, username),
    constraint users_email_unique unique (email),
    constraint users_role_check check (role in ('admin', 'user', 'viewer')),
    constraint users_status_check check (status in ('active', 'suspended', 'deleted'))
);

create table tasks (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null references tenants(id) on delete cascade,
    user_id uuid not null references users(id) on delete cascade,
    name varchar(255) not null,
    description text,
    image varchar(512) not null,
    command text[],
    args text[],
    env_vars jsonb default '{}',
    resource_requests jsonb not null default '{}',
    resource_limits jsonb not null default '{}',
    volumes jsonb default '[]',
    labels jsonb default '{}',
    status varchar(50) not null default 'pending',
    k8s_job_name varchar(255),
    k8s_namespace varchar(255),
    node_selector jsonb default '{}',
    tolerations jsonb default '[]',
    priority integer default 0,
    max_retry_count integer default 3,
    current_retry_count integer default 0,
    created_at timestamp with time zone default now(),
    updated_at timestamp with time zone default now(),
    started_at timestamp with time zone,
    completed_at timestamp with time zone,
    error_message text,

    constraint tasks_status_check check (status in ('pending', 'scheduled', 'running', 'succeeded', 'failed', 'cancelled')),
    constraint tasks_priority_check check (priority >= 0 and priority <= 100)
);

create table volumes (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null references tenants(id) on delete cascade,
    user_id uuid not null references users(id) on delete cascade,
    name varchar(255) not null,
    size varchar(50) not null,
    storage_class varchar(255),
    access_mode varchar(50) not null default 'ReadWriteOnce',
    pvc_name varchar(255),
    status varchar(50) not null default 'pending',
    created_at timestamp with time zone default now(),
    updated_at timestamp with time zone default now(),

    constraint volumes_name_tenant_unique unique (tenant_id, name),
    constraint volumes_access_mode_check check (access_mode in ('ReadWriteOnce', 'ReadOnlyMany', 'ReadWriteMany')),
    constraint volumes_status_check check (status in ('pending', 'bound', 'lost', 'failed'))
);

create table task_volumes (
    id uuid primary key default gen_random_uuid(),
    task_id uuid not null references tasks(id) on delete cascade,
    volume_id uuid not null references volumes(id) on delete cascade,
    mount_path varchar(512) not null,
    read_only boolean default false,

    constraint task_volumes_unique unique (task_id, volume_id)
);

create table resource_quotas (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null references tenants(id) on delete cascade,
    resource_type varchar(100) not null,
    hard_limit bigint not null,
    used_amount bigint default 0,
    created_at timestamp with time zone default now(),
    updated_at timestamp with time zone default now(),

    constraint resource_quotas_tenant_type_unique unique (tenant_id, resource_type)
);

create table task_executions (
    id uuid primary key default gen_random_uuid(),
    task_id uuid not null references tasks(id) on delete cascade,
    execution_id varchar(255) not null,
    status varchar(50) not null,
    node_name varchar(255),
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    exit_code integer,
    error_message text,
    logs_path varchar(512),
    created_at timestamp with time zone default now()
);

create index idx_tenants_status on tenants(status);
create index idx_users_tenant_id on users(tenant_id);
create index idx_users_status on users(status);
create index idx_tasks_tenant_id on tasks(tenant_id);
create index idx_tasks_user_id on tasks(user_id);
create index idx_tasks_status on tasks(status);
create index idx_tasks_created_at on tasks(created_at);
create index idx_volumes_tenant_id on volumes(tenant_id);
create index idx_volumes_status on volumes(status);
create index idx_resource_quotas_tenant_id on resource_quotas(tenant_id);
create index idx_task_executions_task_id on task_executions(task_id);
