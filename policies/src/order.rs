//! Queue orders: which of two candidates is scheduled first.
//!
//! A profile's orders form a chain; the first that is not `Equal` decides (Volcano's
//! `TaskOrderFn` chain). [`fallback`] ends every chain, so the order is total and the same on
//! every replica.

use std::cmp::Ordering;

use berth_core::SchedulingSpec;

pub trait QueueOrder: Send + Sync {
    fn name(&self) -> &'static str;
    /// `Less` means `a` goes first; `Equal` means no opinion.
    fn compare(&self, a: &SchedulingSpec, b: &SchedulingSpec) -> Ordering;
}

/// Higher priority first.
#[derive(Debug, Default, Clone, Copy)]
pub struct Priority;

impl Priority {
    pub const NAME: &'static str = "priority";
}

impl QueueOrder for Priority {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn compare(&self, a: &SchedulingSpec, b: &SchedulingSpec) -> Ordering {
        b.priority.cmp(&a.priority)
    }
}

/// Earlier submission first.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fifo;

impl Fifo {
    pub const NAME: &'static str = "fifo";
}

impl QueueOrder for Fifo {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn compare(&self, a: &SchedulingSpec, b: &SchedulingSpec) -> Ordering {
        a.seq.cmp(&b.seq)
    }
}

/// The built-in last word: submission sequence, then task id.
pub fn fallback(a: &SchedulingSpec, b: &SchedulingSpec) -> Ordering {
    a.seq.cmp(&b.seq).then_with(|| a.task_id.cmp(&b.task_id))
}
