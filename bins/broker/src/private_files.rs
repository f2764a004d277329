//! The data directory and the SQLite files are the broker's user's alone.
//!
//! The database holds every prompt and answer and the agents' `env` (which may carry API keys),
//! and the logs hold CLI output. The directory is made 0700 and the database file 0600 before
//! the store opens it; SQLite creates its `-wal` and `-shm` files with the database file's mode,
//! so they are 0600 as well. The process umask is left alone on purpose: the CLIs inherit it, and
//! the files they write in their projects must keep the user's usual permissions.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Creates `dir` (and missing parents) with mode 0700, or narrows an existing one to 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    restrict(dir, 0o700)
}

/// For a SQLite URL: the database file exists with mode 0600 (created empty if missing, which
/// SQLite treats as a new database), and existing `-wal`/`-shm` files are narrowed to 0600.
pub fn private_database(url: &str) -> Result<()> {
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            private_dir(dir)?;
        }
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create the database file {}", path.display()))?;
    restrict(&path, 0o600)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.clone().into_os_string();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            restrict(&side, 0o600)?;
        }
    }
    Ok(())
}

fn restrict(path: &Path, mode: u32) -> Result<()> {
    let current = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if current != mode {
        std::fs::set_permissions(path, Permissions::from_mode(mode))
            .with_context(|| format!("cannot make {} private (mode {mode:o})", path.display()))?;
        tracing::info!(path = %path.display(), from = format!("{current:o}"), to = format!("{mode:o}"), "narrowed permissions");
    }
    Ok(())
}

/// The file of a `sqlite://` URL (or a bare path); `None` for PostgreSQL and in-memory URLs.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return None;
    }
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}
