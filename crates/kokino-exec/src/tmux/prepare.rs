//! Preparing a CLI's own configuration before its TUI starts: the files and their merged text
//! come from the request's profile (`Tui::config_files`, `Tui::merge_config`); this module reads
//! and writes them.
//!
//! A file is replaced atomically (a temporary file in the same directory, then a rename) with
//! the permissions it had (new files: owner only, as the CLIs create them), so a CLI starting at
//! the same moment reads either the old or the new text, never half of one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use kokino_cli::tui::SetupContext;

use super::TmuxRequest;

/// Merges what the profile wants into the CLI's configuration files under the request's
/// `HOME`. Returns the files it changed. A file that cannot be read, merged or written is
/// logged and left: the TUI then shows its first-run screen, which the profile answers.
pub(super) fn prepare_config(req: &TmuxRequest) -> Vec<String> {
    let Some(home) = req.env.get("HOME").filter(|h| !h.is_empty()) else {
        return Vec::new();
    };
    let cwd = std::fs::canonicalize(&req.cwd).unwrap_or_else(|_| req.cwd.clone());
    let ctx = SetupContext::new(Path::new(home), &cwd, &req.env);
    let mut changed = Vec::new();
    for path in req.tui.config_files(&ctx) {
        let existing = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the CLI's configuration; leaving it");
                continue;
            }
        };
        match req.tui.merge_config(&path, existing.as_deref(), &ctx) {
            Ok(Some(text)) if existing.as_deref() != Some(text.as_str()) => {
                match write_atomically(&path, text.as_bytes()) {
                    Ok(()) => changed.push(path.display().to_string()),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot write the CLI's configuration")
                    }
                }
            }
            Ok(_) => {}
            Err(why) => {
                tracing::warn!(path = %path.display(), %why, "the CLI's configuration cannot be merged; leaving it")
            }
        }
    }
    if !changed.is_empty() {
        tracing::info!(agent = %req.agent_id, files = ?changed, "prepared the CLI's configuration for its TUI");
    }
    changed
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kokino-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
