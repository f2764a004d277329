use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("binary {binary:?} not found on PATH")]
    BinaryNotFound { binary: String },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("working directory {0} does not exist or is not a directory")]
    BadCwd(String),
}
