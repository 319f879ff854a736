//! berth's shared state in Redis (DESIGN.md §5): the only thing the roles share besides
//! PostgreSQL.
//!
//! - [`keys`]: every key name, in one place, all under one partition's hash tag.
//! - [`scripts`]: the Lua scripts, one file per atomic operation (`src/scripts/*.lua`).
//! - [`queue`]: [`Queue`], the handle every role holds: enqueue, claim (with leases), unlease,
//!   reserve (bind to a node), release (finish or retry), node ledger, usage, bindings, events.
//! - [`error`]: the crate's error type, [`QueueError`].
//!
//! Delivery is at-least-once and every operation is idempotent; PostgreSQL stays the system
//! of record, so everything here can be rebuilt from it.

pub mod error;
pub mod keys;
pub mod queue;
pub mod scripts;

pub use error::QueueError;
pub use keys::Keys;
pub use queue::{
    Binding, ClaimedTask, LogEntry, POLICY_REPORT_EVERY, POLICY_REPORT_MAX_AGE, ParkOutcome, PolicyReport, Queue,
    QueuePosition, ReserveOutcome, TaskEvent, TaskState,
};
