//! Circuit breakers: one per agent and one per CLI type (behavior.md, "Circuit breakers").
//!
//! The state machines here are pure: every method that depends on time takes the wall-clock
//! instant as an argument, and the random part of the back-off (the jitter) is a sample the caller
//! passes in. That keeps the rules testable with explicit times, and lets [`BreakerRegistry`]
//! drive them from a [`Clock`](crate::clock::Clock), so tests run under tokio's paused clock with
//! [`TokioClock`](crate::clock::TokioClock). Wall time rather than a monotonic instant is used
//! throughout because the state is persisted: a `retry_at` written before a restart must still
//! mean something after it.
//!
//! The rules, in short:
//!
//! * closed → open after `failure_threshold` consecutive failures (5); the first wait is
//!   `open_for` (60 s) exactly;
//! * open → half_open when the wait has elapsed, on the next admission; half_open admits exactly
//!   one probe at a time and rejects everyone else;
//! * probe success → closed (the back-off returns to `open_for`); probe failure → open again with
//!   the wait doubled, jittered and capped at `max_open_for` (10 min);
//! * `cancelled`, `rate_limited` and `interrupted` are neutral: they neither count nor reset, and a
//!   probe that ends that way frees the probe slot without deciding anything;
//! * `forced_open` rejects everything and `disabled` admits everything; both ignore outcomes and
//!   only a manual reset leaves them.
//!
//! The module is split by concern: [`state`] is the state machine of one breaker, [`cli`] the
//! CLI-scope counting rule around it, [`registry`] the shared set of breakers, [`permit`] the
//! admission a caller holds while its call runs, `rng` the jitter generator, and [`parking`] the
//! rate-limit parking that lives beside the breakers without being one.

use std::sync::{Mutex, MutexGuard};

pub mod cli;
pub mod parking;
pub mod permit;
pub mod registry;
mod rng;
pub mod state;
#[cfg(test)]
mod test_support;

pub use cli::CliBreaker;
pub use parking::Parking;
pub use permit::ExecutionPermit;
pub use registry::{
    Admittance, BreakerRegistry, CircuitRejection, CircuitStatus, Scope, ScopeError,
    ScopedTransition,
};
pub use state::{
    jittered, Admission, Breaker, BreakerConfig, BreakerSnapshot, BreakerState, Cause, ProbeTicket,
    Transition,
};

/// A poisoned mutex only means another thread panicked between two field updates of a breaker;
/// the state is still a valid breaker, and refusing every later call would be worse.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
