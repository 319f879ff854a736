//! berth's scheduling policies, in the shape of kube-scheduler's framework. Pure: no I/O.
//!
//! - [`filter`]: [`NodeFilter`]s say whether a task may run on a node; a rejection is an
//!   [`Unfit`] (data shown by "why pending", never an error).
//! - [`score`]: [`NodeScorer`]s rank feasible nodes in 0..=100, with kube-scheduler's maths.
//! - [`order`]: [`QueueOrder`]s sort candidates; the first non-`Equal` answer wins and a
//!   built-in (seq, task id) fallback makes every order total.
//! - [`profile`]: a [`Profile`] is built from config by one exhaustive `match` (the registry),
//!   owns the weights, checks every score's range and computes the weighted sum.
//!
//! Start at [`Profile::build`].

pub mod filter;
pub mod order;
pub mod profile;
pub mod score;

pub use filter::{NodeFilter, Unfit};
pub use order::QueueOrder;
pub use profile::{Profile, ProfileError};
pub use score::{MAX_NODE_SCORE, NodeScorer};
