//! berth's scheduler (DESIGN.md §6): a pure decision core wrapped by a Redis worker loop.
//!
//! - [`decide`]: `decide(snapshot, candidates, profile) -> decisions`, pure and deterministic;
//!   the worker, `berth explain` and the simulator all call it.
//! - [`candidates`]: the free-CPU index that bounds a decision to `candidate_limit` nodes.
//! - [`explain`]: `berth explain`: one task against described nodes, every node's verdict.
//! - [`worker`]: [`worker::run`], one replica's loop: claim → refresh snapshot → decide →
//!   reserve atomically (re-scoring on conflict) → hand back what did not bind.
//!
//! Replicas share nothing but Redis and need no leader: the reserve script re-checks capacity,
//! so racing replicas cannot over-commit a node; they only count a conflict and try again.

pub mod candidates;
pub mod decide;
pub mod explain;
pub mod worker;

pub use candidates::CandidateIndex;
pub use decide::{Decision, decide, decide_with};
pub use worker::{SchedulerStats, run, run_reloading};
