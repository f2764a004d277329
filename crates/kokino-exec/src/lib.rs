//! Kokino's executors: the only crate that starts processes.
//!
//! A headless run is one CLI process in its own process group, fed its prompt on stdin, read line
//! by line with bounded memory, watched by three watchdogs (execution timeout, inactivity, and the
//! post-result grace) and a memory sampler, and stopped — when it must be — by signalling the
//! whole group: SIGTERM, a grace period, SIGKILL, reap. Whatever happens, no process of the group
//! outlives [`run_headless`].

#![warn(missing_docs)]

mod error;
mod group;
mod headless;
mod lines;
pub mod probe;
pub mod procfs;
mod resolve;
pub mod spawner;
pub mod supervisor;
#[cfg(feature = "tmux")]
pub mod tmux;

pub use error::ExecError;
pub use headless::{
    run_headless, ExecEvent, HeadlessCommand, Limits, RunResult, StdinGate, StopReason,
};
pub use resolve::resolve_binary;
#[cfg(feature = "tmux")]
pub use tmux::{TmuxExecutor, TmuxRequest};
pub use tokio_util::sync::CancellationToken;
