use thiserror::Error;

/// What can go wrong before a CLI runs. Failures of a run itself are not errors: they are the
/// run's outcome ([`crate::RunResult`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExecError {
    /// No executable of that name on `PATH` (or at that path).
    #[error("binary {binary:?} not found on PATH")]
    BinaryNotFound {
        /// The name or path that was looked for.
        binary: String,
    },
    /// The binary exists but could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The working directory is missing.
    #[error("working directory {0} does not exist or is not a directory")]
    BadCwd(String),
}
