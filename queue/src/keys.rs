//! Key names. Every key of a partition starts with `berth:{<partition>}:`, so they share one
//! Redis Cluster slot and the scripts, which derive a few keys from the prefix, stay legal
//! there.

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(partition: &str) -> Keys {
        Keys { prefix: format!("berth:{{{partition}}}:") }
    }

    /// `berth:{p}:`, passed to scripts that derive per-tenant and per-node keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash: a task's scheduling fields and queue state.
    pub fn task(&self, id: Uuid) -> String {
        format!("{}task:{id}", self.prefix)
    }
    /// Counter: submission sequence numbers.
    pub fn seq(&self) -> String {
        format!("{}seq", self.prefix)
    }
    /// Sorted set: one tenant's ready tasks, by (priority desc, seq asc).
    pub fn ready(&self, tenant: &str) -> String {
        format!("{}ready:{tenant}", self.prefix)
    }
    /// Set: tenants with ready work.
    pub fn tenants(&self) -> String {
        format!("{}tenants", self.prefix)
    }
    /// Set: suspended tenants, whose ready tasks stay queued and are not claimed.
    pub fn suspended(&self) -> String {
        format!("{}suspended", self.prefix)
    }
    /// Sorted set: claimed tasks by lease expiry (ms).
    pub fn leases(&self) -> String {
        format!("{}leases", self.prefix)
    }
    /// Sorted set: tasks waiting for a time (retry backoff, unschedulable), by due time (ms).
    pub fn delayed(&self) -> String {
        format!("{}delayed", self.prefix)
    }
    /// Sorted set: tasks no node fitted, by the end of their backoff (ms).
    pub fn parked(&self) -> String {
        format!("{}parked", self.prefix)
    }
    /// Sorted set: parked tasks by the capacity epoch they were judged at.
    pub fn parked_epoch(&self) -> String {
        format!("{}parked_epoch", self.prefix)
    }
    /// Counter: bumped whenever capacity may have grown (a release, a node change), so parked
    /// tasks are looked at again.
    pub fn capacity_epoch(&self) -> String {
        format!("{}capacity_epoch", self.prefix)
    }
    /// Set: names of the nodes in the ledger.
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    /// Hash: the cluster's schedulable capacity (cpu, mem, gpu, extended resources by name),
    /// what fair share divides by.
    pub fn capacity(&self) -> String {
        format!("{}capacity", self.prefix)
    }
    /// Hash: scheduler replica → the policy it runs (JSON), refreshed while it lives.
    pub fn schedulers(&self) -> String {
        format!("{}schedulers", self.prefix)
    }
    /// Hash: tenant → fair-share weight (absent means 1).
    pub fn weights(&self) -> String {
        format!("{}weights", self.prefix)
    }
    /// Hash: one node's allocatable, reserved, schedulable and labels/taints.
    pub fn node(&self, name: &str) -> String {
        format!("{}node:{name}", self.prefix)
    }
    /// Sorted set: each node by the ledger version of its last change, so a scheduler
    /// refreshes only the nodes that changed since its snapshot.
    pub fn nodes_changed(&self) -> String {
        format!("{}nodes:changed", self.prefix)
    }
    /// Counter: bumped on every ledger change, so schedulers refresh only when it moved.
    pub fn nodes_version(&self) -> String {
        format!("{}nodes:version", self.prefix)
    }
    /// Hash: resources held by one tenant's bound tasks.
    pub fn usage(&self, tenant: &str) -> String {
        format!("{}usage:{tenant}", self.prefix)
    }
    /// Stream: bindings from schedulers to executors.
    pub fn bindings(&self) -> String {
        format!("{}bindings", self.prefix)
    }
    /// String with TTL: which process holds a singleton role (reconciler, node watcher).
    pub fn leader(&self, role: &str) -> String {
        format!("{}leader:{role}", self.prefix)
    }
    /// Counter with TTL: one rate limit's window (`login:user:<name>`, `login:addr:<ip>`).
    pub fn rate(&self, what: &str) -> String {
        format!("{}rate:{what}", self.prefix)
    }
    /// Stream: one task's log lines (all attempts), capped; an `end` entry closes it.
    pub fn logs(&self, task: Uuid) -> String {
        format!("{}logs:{task}", self.prefix)
    }
    /// Hash: attempt -> how many of its log lines [`Keys::logs`] holds (lines are appended
    /// once by their index).
    pub fn log_lines(&self, task: Uuid) -> String {
        format!("{}logn:{task}", self.prefix)
    }
    /// Stream: tenants created or whose quota changed (`tenant` = id), capped; the executors
    /// bring the tenant's namespace up to date.
    pub fn tenant_changes(&self) -> String {
        format!("{}tenants:changed", self.prefix)
    }
    /// Stream: task state changes, capped.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }
    /// The apalis-redis namespace of webhook deliveries: apalis names its keys
    /// `<this>:active`, `<this>:scheduled`, …, so they share the partition's hash tag and
    /// [`crate::Queue::purge`] removes them with the rest.
    pub fn webhook_jobs(&self) -> String {
        format!("{}webhooks", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_partition_hash_tag() {
        let k = Keys::new("p1");
        let id = Uuid::nil();
        for key in [
            k.task(id),
            k.seq(),
            k.ready("t"),
            k.tenants(),
            k.leases(),
            k.delayed(),
            k.nodes(),
            k.node("n"),
            k.nodes_version(),
            k.nodes_changed(),
            k.usage("t"),
            k.capacity(),
            k.weights(),
            k.schedulers(),
            k.parked(),
            k.parked_epoch(),
            k.capacity_epoch(),
            k.bindings(),
            k.events(),
            k.leader("r"),
            k.suspended(),
            k.rate("x"),
            k.logs(id),
            k.log_lines(id),
            k.tenant_changes(),
        ] {
            assert!(key.starts_with("berth:{p1}:"), "{key}");
        }
    }
}
