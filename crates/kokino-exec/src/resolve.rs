use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::ExecError;

/// Finds the binary the executor will run: a path (anything with a `/`) is taken as is if it is
/// an executable file; a bare name is looked up on `path_var`. The environment doctor calls this
/// same function, so "the doctor found it" and "the executor can run it" never disagree.
pub fn resolve_binary(binary: &str, path_var: Option<&OsStr>) -> Result<PathBuf, ExecError> {
    let not_found = || ExecError::BinaryNotFound {
        binary: binary.to_owned(),
    };
    if binary.is_empty() {
        return Err(not_found());
    }
    if binary.contains('/') {
        let p = Path::new(binary);
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(not_found())
        };
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    which::which_in(binary, path_var, cwd).map_err(|_| not_found())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
