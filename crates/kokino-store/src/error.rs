//! The store's one error type. It speaks in what happened to the data, never in the database
//! driver's types, so callers can decide what to do (retry later, report a conflict, call an
//! operator) without knowing which database runs underneath.

use thiserror::Error;

/// Why a store operation failed.
///
/// Only [`StoreError::Unavailable`] means the database could not be reached or did not answer
/// in time ([`StoreError::is_unavailable`]); every other variant is a definite answer that a
/// retry will not change by itself.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time: the connection was refused or
    /// lost, the pool had no free connection, an I/O operation failed, or a lock or statement
    /// timed out. Retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write broke one of the schema's rules (a reference to a missing agent or conversation, a
    /// duplicate id, a value outside the allowed set). Nothing was written.
    #[error("constraint violated: {0}")]
    Constraint(String),
    /// The database refused a statement for another reason (a bug in the store's SQL, a
    /// serialisation failure, an unexpected answer).
    #[error("database error: {0}")]
    Database(String),
    /// Bringing the schema up to date failed while opening the store.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The directory that holds the SQLite file cannot be created.
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why it could not be created.
        #[source]
        source: std::io::Error,
    },
    /// A stored row (or the database file itself) cannot be turned back into a domain record:
    /// an unknown CLI type, a malformed timestamp, invalid JSON, a NULL where none may be.
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        /// The table the row came from.
        table: &'static str,
        /// What was wrong with it.
        message: String,
    },
    /// The request cannot be served by this store as configured (an unusable URL, a SQLite
    /// pragma asked of PostgreSQL, a backend left out at build time, a fenced write of another
    /// agent's execution).
    #[error("{0}")]
    Unsupported(String),
    /// The execution named by the caller does not exist.
    #[error("execution {0} not found")]
    ExecutionNotFound(String),
    /// A fenced write carried a lease that is no longer the agent's live lease: it expired (and
    /// may have been taken over) or was released. Nothing was written.
    #[error(
        "the lease of agent {agent_id} held with token {token} is no longer current: \
         another broker owns the agent"
    )]
    StaleLease {
        /// The agent whose lease was checked.
        agent_id: String,
        /// The fencing token the write carried.
        token: i64,
    },
}

impl StoreError {
    /// Whether the database could not be reached or did not answer in time, the one failure
    /// that says nothing about the request and may pass by itself (HTTP 503 territory).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// PostgreSQL SQLSTATE codes that mean "the server cannot serve now" rather than "this statement
/// is wrong": `57014` a statement timeout, `57P01`–`57P03` a server shutting down or starting,
/// `55P03` a lock not available in time. Whole classes `08` (connection exceptions) and `53`
/// (insufficient resources: too many connections, disk full, out of memory) count too.
const PG_UNAVAILABLE: &[&str] = &["57014", "57P01", "57P02", "57P03", "55P03"];

/// SQLite primary result codes that mean the same: 5 `BUSY`, 6 `LOCKED`, 10 `IOERR`,
/// 13 `FULL`, 14 `CANTOPEN`.
const SQLITE_UNAVAILABLE: &[i64] = &[5, 6, 10, 13, 14];

/// SQLite primary result codes of a damaged file: 11 `CORRUPT`, 26 `NOTADB`.
const SQLITE_CORRUPT: &[i64] = &[11, 26];

/// Classifies a driver error. Crate-private, so that no sqlx type appears in the public API.
pub(crate) fn from_sqlx(e: sqlx::Error) -> StoreError {
    use sqlx::error::ErrorKind;
    let message = e.to_string();
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(message),
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation
            | ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation => StoreError::Constraint(message),
            _ => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                // SQLite reports (extended) result codes as numbers, PostgreSQL SQLSTATEs as
                // five characters; the low byte of a SQLite code is its primary code.
                let sqlite_primary = code.parse::<i64>().ok().map(|c| c & 0xff);
                if PG_UNAVAILABLE.contains(&code.as_str())
                    || code.starts_with("08")
                    || code.starts_with("53")
                    || sqlite_primary.is_some_and(|c| SQLITE_UNAVAILABLE.contains(&c))
                {
                    StoreError::Unavailable(message)
                } else if sqlite_primary.is_some_and(|c| SQLITE_CORRUPT.contains(&c)) {
                    StoreError::Corrupt {
                        table: "(database file)",
                        message,
                    }
                } else {
                    StoreError::Database(message)
                }
            }
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt {
            table: "(unknown)",
            message,
        },
        _ => StoreError::Database(message),
    }
}

/// Classifies a rusqlite error (the SQLite writer thread, `db::native`) as [`from_sqlx`]
/// classifies sqlx's SQLite errors.
#[cfg(feature = "sqlite")]
pub(crate) fn from_rusqlite(e: rusqlite::Error) -> StoreError {
    let message = e.to_string();
    let rusqlite::Error::SqliteFailure(failure, _) = &e else {
        return StoreError::Database(message);
    };
    let primary = i64::from(failure.extended_code) & 0xff;
    if failure.code == rusqlite::ErrorCode::ConstraintViolation {
        StoreError::Constraint(message)
    } else if SQLITE_UNAVAILABLE.contains(&primary) {
        StoreError::Unavailable(message)
    } else if SQLITE_CORRUPT.contains(&primary) {
        StoreError::Corrupt {
            table: "(database file)",
            message,
        }
    } else {
        StoreError::Database(message)
    }
}

/// Classifies a migration error: a database that went away mid-migration is unavailable, any
/// other failure is a migration problem.
pub(crate) fn from_migrate(e: sqlx::migrate::MigrateError) -> StoreError {
    match e {
        sqlx::migrate::MigrateError::Execute(inner) => match from_sqlx(inner) {
            unavailable @ StoreError::Unavailable(_) => unavailable,
            other => StoreError::Migration(other.to_string()),
        },
        other => StoreError::Migration(other.to_string()),
    }
}
