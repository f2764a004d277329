use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("execution {0} not found")]
    ExecutionNotFound(String),
    /// A fenced write carried a lease that is no longer the agent's live lease: it expired (and
    /// may have been taken over) or was released. Nothing was written.
    #[error(
        "the lease of agent {agent_id} held with token {token} is no longer current: \
         another broker owns the agent"
    )]
    StaleLease { agent_id: String, token: i64 },
}
