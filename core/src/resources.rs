//! Resource amounts: cpu in millicores, memory in bytes, gpus (`nvidia.com/gpu`) as a count.

use serde::{Deserialize, Serialize};

/// kube-scheduler's default CPU request for a container that names none (100m), used for
/// scoring and reservation so that request-less tasks still take room.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
/// kube-scheduler's default memory request for a container that names none (200Mi).
pub const DEFAULT_MEMORY_BYTES: u64 = 200 << 20;

/// An amount of each resource berth schedules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpu: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources { cpu_millis: 0, memory_bytes: 0, gpu: 0 };

    pub const fn new(cpu_millis: u64, memory_bytes: u64, gpu: u64) -> Self {
        Resources { cpu_millis, memory_bytes, gpu }
    }

    /// Whether `self` fits in `free` on every resource.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis && self.memory_bytes <= free.memory_bytes && self.gpu <= free.gpu
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            gpu: self.gpu.saturating_sub(other.gpu),
        }
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            gpu: self.gpu.saturating_add(other.gpu),
        }
    }

    /// The request with kube-scheduler's non-zero defaults applied to cpu and memory.
    pub fn with_defaults(&self) -> Resources {
        Resources {
            cpu_millis: if self.cpu_millis == 0 { DEFAULT_CPU_MILLIS } else { self.cpu_millis },
            memory_bytes: if self.memory_bytes == 0 { DEFAULT_MEMORY_BYTES } else { self.memory_bytes },
            gpu: self.gpu,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Resources::ZERO
    }

    /// The resources on which `self` exceeds `free`, by their Kubernetes names.
    pub fn shortfalls(&self, free: &Resources) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.cpu_millis > free.cpu_millis {
            out.push("cpu");
        }
        if self.memory_bytes > free.memory_bytes {
            out.push("memory");
        }
        if self.gpu > free.gpu {
            out.push(GPU_RESOURCE);
        }
        out
    }
}

impl Resources {
    /// Parses a stored seed `ResourceRequirements` object (`{"cpu": "100m", "memory": "128Mi",
    /// "gpu": 1}`); absent fields are zero. Admission validated it, so errors mean corruption.
    pub fn from_requirements_json(v: &serde_json::Value) -> Result<Resources, String> {
        let q = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
        let cpu = q("cpu").map(crate::quantity::parse_cpu_millis).transpose().map_err(|e| e.to_string())?.unwrap_or(0);
        let mem = q("memory").map(crate::quantity::parse_bytes).transpose().map_err(|e| e.to_string())?.unwrap_or(0);
        let gpu = v.get("gpu").and_then(|x| x.as_u64()).unwrap_or(0);
        Ok(Resources::new(cpu, mem, gpu))
    }
}

/// The Kubernetes extended-resource name of the seed's `gpu` field.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_missing_cpu_and_memory() {
        let r = Resources::new(0, 0, 2).with_defaults();
        assert_eq!(r, Resources::new(100, 200 << 20, 2));
        let r = Resources::new(500, 1 << 30, 0).with_defaults();
        assert_eq!(r, Resources::new(500, 1 << 30, 0));
    }

    #[test]
    fn shortfalls_name_each_short_resource() {
        let free = Resources::new(1000, 1 << 30, 0);
        assert_eq!(Resources::new(2000, 1 << 20, 1).shortfalls(&free), vec!["cpu", "nvidia.com/gpu"]);
        assert!(Resources::new(1000, 1 << 30, 0).fits_in(&free));
    }
}
