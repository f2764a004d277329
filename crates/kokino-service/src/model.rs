//! The service's own shapes. The wire types live in `kokino-api` so that a client can share
//! them without depending on the service; they are re-exported here under their old paths.

use kokino_cli::StreamEvent;
use kokino_core::CommMode;

pub use kokino_api::model::*;

/// Progress of one execute call, for streaming clients.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Waiting for the agent's lock behind `position` others (0: running next).
    Queued {
        /// Runs ahead of this one (the running one included).
        position: usize,
    },
    /// The CLI process started.
    Started {
        /// Its process id.
        pid: i32,
        /// The mode it runs in.
        mode: CommMode,
        /// The CLI session it resumes, if any.
        session_id: Option<String>,
    },
    /// An event of the CLI's output stream.
    Stream(StreamEvent),
}
