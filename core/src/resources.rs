//! Resource amounts: cpu in millicores, memory in bytes, gpus (`nvidia.com/gpu`) as a count,
//! and any other extended resource (`amd.com/gpu`, `example.com/fpga`) by name, in whole units.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// kube-scheduler's default CPU request for a container that names none (100m), used for
/// scoring and reservation so that request-less tasks still take room.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
/// kube-scheduler's default memory request for a container that names none (200Mi).
pub const DEFAULT_MEMORY_BYTES: u64 = 200 << 20;
/// The Kubernetes extended-resource name of the seed's `gpu` field.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The most distinct extended resources one task may request.
pub const MAX_EXTENDED_PER_TASK: usize = 8;
/// The largest amount of one extended resource a task may request or a node may offer.
pub const MAX_EXTENDED_AMOUNT: u64 = 1_000_000;

/// Extended resources other than `nvidia.com/gpu`, by name, in whole units. Never holds a
/// zero amount, so equal maps mean equal amounts. Empty (the common case) is a null pointer:
/// nothing to allocate, copy or drop on the scheduler's per-node paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[allow(clippy::box_collection, reason = "one pointer, not a map's three words, in every Resources")]
pub struct Extended(Option<Box<BTreeMap<String, u64>>>);

impl Serialize for Extended {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(m) => m.serialize(s),
            None => BTreeMap::<String, u64>::new().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Extended {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, u64>::deserialize(d)?;
        Ok(m.into_iter().collect())
    }
}

impl Extended {
    pub const NONE: Extended = Extended(None);

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    #[inline]
    pub fn get(&self, name: &str) -> u64 {
        match &self.0 {
            None => 0,
            Some(m) => m.get(name).copied().unwrap_or(0),
        }
    }

    /// Sets `name` to `amount`; zero removes it.
    pub fn set(&mut self, name: impl Into<String>, amount: u64) {
        let name = name.into();
        if amount == 0 {
            if let Some(m) = &mut self.0 {
                m.remove(&name);
                if m.is_empty() {
                    self.0 = None;
                }
            }
        } else {
            self.0.get_or_insert_with(Default::default).insert(name, amount);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().flat_map(|m| m.iter()).map(|(k, v)| (k.as_str(), *v))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    /// The form the Redis scripts read: `name=amount` pairs joined by `,` (names hold
    /// neither), empty for none.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(k);
            s.push('=');
            s.push_str(&v.to_string());
        }
        s
    }

    /// The inverse of [`Extended::encode`].
    pub fn decode(s: &str) -> Result<Extended, String> {
        let mut out = Extended::default();
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("extended resource entry {pair:?}"))?;
            let v = v.parse::<u64>().map_err(|_| format!("extended resource amount {pair:?}"))?;
            out.set(k, v);
        }
        Ok(out)
    }

    /// `self` with each amount of `other` combined by `f` (zero where absent on either side).
    fn combine(&self, other: &Extended, f: impl Fn(u64, u64) -> u64) -> Extended {
        if other.is_empty() {
            return self.clone();
        }
        let mut out = self.clone();
        for (k, v) in other.iter() {
            out.set(k, f(out.get(k), v));
        }
        out
    }
}

impl<S: Into<String>> FromIterator<(S, u64)> for Extended {
    fn from_iter<I: IntoIterator<Item = (S, u64)>>(iter: I) -> Self {
        let mut out = Extended::default();
        for (k, v) in iter {
            out.set(k, v);
        }
        out
    }
}

/// An amount of each resource berth schedules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpu: u64,
    /// Extended resources besides `nvidia.com/gpu` (which is `gpu`).
    #[serde(default, skip_serializing_if = "Extended::is_empty")]
    pub extended: Extended,
}

impl Resources {
    pub const ZERO: Resources = Resources { cpu_millis: 0, memory_bytes: 0, gpu: 0, extended: Extended::NONE };

    pub const fn new(cpu_millis: u64, memory_bytes: u64, gpu: u64) -> Self {
        Resources { cpu_millis, memory_bytes, gpu, extended: Extended::NONE }
    }

    /// `self` with extended resource `name` set to `amount`.
    pub fn with_extended(mut self, name: &str, amount: u64) -> Self {
        self.set(name, amount);
        self
    }

    /// The amount of a resource by its Kubernetes name (`cpu` in millicores, `memory` in
    /// bytes, `nvidia.com/gpu`, or any extended resource).
    pub fn amount(&self, name: &str) -> u64 {
        match name {
            "cpu" => self.cpu_millis,
            "memory" => self.memory_bytes,
            GPU_RESOURCE => self.gpu,
            other => self.extended.get(other),
        }
    }

    /// Sets a resource by its Kubernetes name, as [`Resources::amount`] reads it.
    pub fn set(&mut self, name: &str, amount: u64) {
        match name {
            "cpu" => self.cpu_millis = amount,
            "memory" => self.memory_bytes = amount,
            GPU_RESOURCE => self.gpu = amount,
            other => self.extended.set(other, amount),
        }
    }

    /// Sets resource `name` from a Kubernetes quantity: `cpu`, `memory`, `nvidia.com/gpu` or
    /// an extended resource (whole units). A name berth does not schedule is an error saying
    /// so; callers that meet such names (a node's `pods`) skip them.
    pub fn set_quantity(&mut self, name: &str, text: &str) -> Result<(), String> {
        let amount = match name {
            "cpu" => crate::quantity::parse_cpu_millis(text).map_err(|e| e.to_string())?,
            "memory" => crate::quantity::parse_bytes(text).map_err(|e| e.to_string())?,
            GPU_RESOURCE => parse_count(text)?,
            other => {
                check_extended_name(other).map_err(|e| format!("not a resource berth schedules: {e}"))?;
                parse_count(text)?
            }
        };
        self.set(name, amount);
        Ok(())
    }

    /// Whether `self` fits in `free` on every resource.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis
            && self.memory_bytes <= free.memory_bytes
            && self.gpu <= free.gpu
            && self.extended.iter().all(|(k, v)| v <= free.extended.get(k))
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        let extended = self.extended.combine(&other.extended, u64::saturating_sub);
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            gpu: self.gpu.saturating_sub(other.gpu),
            extended,
        }
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        let extended = self.extended.combine(&other.extended, u64::saturating_add);
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            gpu: self.gpu.saturating_add(other.gpu),
            extended,
        }
    }

    /// The request with kube-scheduler's non-zero defaults applied to cpu and memory.
    pub fn with_defaults(&self) -> Resources {
        Resources {
            cpu_millis: if self.cpu_millis == 0 { DEFAULT_CPU_MILLIS } else { self.cpu_millis },
            memory_bytes: if self.memory_bytes == 0 { DEFAULT_MEMORY_BYTES } else { self.memory_bytes },
            gpu: self.gpu,
            extended: self.extended.clone(),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Resources::ZERO
    }

    /// The resources, by their Kubernetes names, of which `self` needs more than a node with
    /// `allocatable` and `requested` has free (`allocatable − requested`, floored at zero).
    /// Computes no `free` value, so checking a node allocates nothing unless it falls short
    /// of an extended resource.
    pub fn shortfalls(&self, allocatable: &Resources, requested: &Resources) -> Shortfalls {
        let short = |need: u64, alloc: u64, used: u64| need > alloc.saturating_sub(used);
        let mut s = Shortfalls {
            cpu: short(self.cpu_millis, allocatable.cpu_millis, requested.cpu_millis),
            memory: short(self.memory_bytes, allocatable.memory_bytes, requested.memory_bytes),
            gpu: short(self.gpu, allocatable.gpu, requested.gpu),
            extended: Vec::new(),
        };
        for (k, v) in self.extended.iter() {
            if short(v, allocatable.extended.get(k), requested.extended.get(k)) {
                s.extended.push(k.to_owned());
            }
        }
        s
    }

    /// Parses a stored seed `ResourceRequirements` object (`{"cpu": "100m", "memory": "128Mi",
    /// "gpu": 1, "extended": {"amd.com/gpu": "1"}}`); absent fields are zero. Admission
    /// validated it, so errors mean corruption.
    pub fn from_requirements_json(v: &serde_json::Value) -> Result<Resources, String> {
        let q = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
        let cpu = q("cpu").map(crate::quantity::parse_cpu_millis).transpose().map_err(|e| e.to_string())?.unwrap_or(0);
        let mem = q("memory").map(crate::quantity::parse_bytes).transpose().map_err(|e| e.to_string())?.unwrap_or(0);
        let gpu = v.get("gpu").and_then(|x| x.as_u64()).unwrap_or(0);
        let mut r = Resources::new(cpu, mem, gpu);
        if let Some(ext) = v.get("extended").and_then(|x| x.as_object()) {
            for (k, amount) in ext {
                let text = match amount {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                r.extended.set(k.as_str(), parse_count(&text).map_err(|e| format!("extended.{k}: {e}"))?);
            }
        }
        Ok(r)
    }
}

/// Which resources a task is short of on a node (see [`Resources::shortfalls`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shortfalls {
    pub cpu: bool,
    pub memory: bool,
    pub gpu: bool,
    /// Extended resources besides `nvidia.com/gpu`, in name order.
    pub extended: Vec<String>,
}

impl Shortfalls {
    pub fn any(&self) -> bool {
        self.cpu || self.memory || self.gpu || !self.extended.is_empty()
    }

    /// The short resources by their Kubernetes names: cpu, memory, nvidia.com/gpu, then the
    /// rest by name.
    pub fn names(&self) -> Vec<&str> {
        let mut v = Vec::new();
        if self.cpu {
            v.push("cpu");
        }
        if self.memory {
            v.push("memory");
        }
        if self.gpu {
            v.push(GPU_RESOURCE);
        }
        v.extend(self.extended.iter().map(String::as_str));
        v
    }
}

/// A whole-unit quantity, as Kubernetes requires of extended resources: `"2"`, `"1k"`,
/// `"2000m"`; at most [`MAX_EXTENDED_AMOUNT`].
pub fn parse_count(text: &str) -> Result<u64, String> {
    let millis = crate::quantity::parse_cpu_millis(text).map_err(|e| e.to_string())?;
    if millis % 1000 != 0 {
        return Err(format!("{text:?} must be a whole number"));
    }
    let n = millis / 1000;
    if n > MAX_EXTENDED_AMOUNT {
        return Err(format!("must be at most {MAX_EXTENDED_AMOUNT}"));
    }
    Ok(n)
}

/// Kubernetes' `IsExtendedResourceName`: a qualified name with a domain outside
/// `kubernetes.io`, not starting with `requests.`. berth also refuses `nvidia.com/gpu` here,
/// which is the seed's own `gpu` field.
pub fn check_extended_name(name: &str) -> Result<(), String> {
    if name == GPU_RESOURCE {
        return Err(format!("{GPU_RESOURCE} is requested with the `gpu` field, not as an extended resource"));
    }
    if !name.contains('/') || name.contains("kubernetes.io/") {
        return Err("must be a domain-prefixed name outside kubernetes.io, such as example.com/fpga".into());
    }
    if name.starts_with("requests.") {
        return Err("must not start with \"requests.\"".into());
    }
    if name.contains(',') || name.contains('=') {
        return Err("must not contain ',' or '='".into());
    }
    crate::validate::label_key(&format!("requests.{name}")).map_err(|e| format!("is not a qualified name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_missing_cpu_and_memory() {
        let r = Resources::new(0, 0, 2).with_defaults();
        assert_eq!(r, Resources::new(100, 200 << 20, 2));
        let r = Resources::new(500, 1 << 30, 0).with_extended("amd.com/gpu", 1).with_defaults();
        assert_eq!(r, Resources::new(500, 1 << 30, 0).with_extended("amd.com/gpu", 1));
    }

    #[test]
    fn shortfalls_name_each_short_resource() {
        let alloc = Resources::new(2000, 2 << 30, 0).with_extended("amd.com/gpu", 1);
        let used = Resources::new(1000, 1 << 30, 0);
        let ask = Resources::new(2000, 1 << 20, 1).with_extended("amd.com/gpu", 2).with_extended("x.io/fpga", 1);
        assert_eq!(ask.shortfalls(&alloc, &used).names(), vec!["cpu", "nvidia.com/gpu", "amd.com/gpu", "x.io/fpga"]);
        let fits = Resources::new(1000, 1 << 30, 0).with_extended("amd.com/gpu", 1);
        assert!(!fits.shortfalls(&alloc, &used).any());
        assert!(fits.fits_in(&alloc.saturating_sub(&used)));
        assert!(!ask.fits_in(&alloc.saturating_sub(&used)));
        // Over-committed on cpu, a task asking no gpu still fits gpu-wise (free floors at 0).
        let over = Resources::new(500, 0, 0);
        let s = Resources::new(100, 0, 0).shortfalls(&Resources::new(400, 0, 0), &over);
        assert_eq!(s.names(), vec!["cpu"]);
    }

    #[test]
    fn extended_arithmetic_keeps_no_zero_entries() {
        let a = Resources::ZERO.with_extended("amd.com/gpu", 2);
        let b = a.saturating_add(&a);
        assert_eq!(b.amount("amd.com/gpu"), 4);
        let c = b.saturating_sub(&b);
        assert!(c.is_zero(), "{c:?}");
        assert_eq!(Resources::ZERO.saturating_sub(&a), Resources::ZERO);
    }

    #[test]
    fn extended_encoding_round_trips() {
        let e: Extended = [("amd.com/gpu", 1), ("x.io/fpga", 12)].into_iter().collect();
        assert_eq!(e.encode(), "amd.com/gpu=1,x.io/fpga=12");
        assert_eq!(Extended::decode(&e.encode()).unwrap(), e);
        assert_eq!(Extended::decode("").unwrap(), Extended::default());
        assert!(Extended::decode("amd.com/gpu").is_err());
    }

    #[test]
    fn extended_names_follow_kubernetes() {
        assert!(check_extended_name("amd.com/gpu").is_ok());
        assert!(check_extended_name("example.com/fpga-v2").is_ok());
        for bad in ["fpga", "kubernetes.io/x", "requests.x.io/y", "nvidia.com/gpu", "Bad_Domain/x", "a.io/"] {
            assert!(check_extended_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_are_whole_numbers() {
        assert_eq!(parse_count("2"), Ok(2));
        assert_eq!(parse_count("2000m"), Ok(2));
        assert!(parse_count("1500m").is_err());
        assert!(parse_count("-1").is_err());
        assert!(parse_count("2M").is_err());
    }

    #[test]
    fn stored_requirements_parse_with_extended() {
        let v = serde_json::json!({"cpu": "1", "gpu": 1, "extended": {"amd.com/gpu": "2"}});
        let r = Resources::from_requirements_json(&v).unwrap();
        assert_eq!(r, Resources::new(1000, 0, 1).with_extended("amd.com/gpu", 2));
    }
}
