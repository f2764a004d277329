//! Following a CLI's session record (Claude Code's transcript, Codex's rollout, Gemini's chat
//! recording) as the completion signal.
//!
//! The file is followed with inotify (an event per write, no polling) from the offset it had
//! before the prompt was pasted, so earlier turns are never mistaken for this one. What its lines
//! mean is the profile's business (`kokino_cli::tui::TranscriptParser`); this module only hands
//! over the complete lines appended since the last read.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

/// Where a file is being read from, and the line being assembled.
#[derive(Default)]
struct FileState {
    offset: u64,
    partial: Vec<u8>,
    /// Set while an over-long line is being skipped up to its newline.
    skipping: bool,
}

impl FileState {
    fn at_end_of(path: &Path) -> FileState {
        FileState {
            offset: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            ..FileState::default()
        }
    }

    /// Appends to `lines` the complete lines written to `path` since the last read. A line
    /// still being written stays in the buffer until its newline arrives; a line longer than
    /// `max_line` is dropped.
    fn read(&mut self, path: &Path, max_line: usize, lines: &mut Vec<String>) {
        let Ok(mut f) = std::fs::File::open(path) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Replaced or truncated: start over from the top of the new file.
            *self = FileState::default();
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut fresh = Vec::new();
        let Ok(n) = f.take(len - self.offset).read_to_end(&mut fresh) else {
            return;
        };
        self.offset += n as u64;
        for chunk in fresh.split_inclusive(|&b| b == b'\n') {
            let complete = chunk.last() == Some(&b'\n');
            if !self.skipping {
                self.partial.extend_from_slice(chunk);
            }
            if self.partial.len() > max_line {
                self.partial.clear();
                self.skipping = true;
            }
            if complete {
                if !self.skipping {
                    let line = std::mem::take(&mut self.partial);
                    lines.push(String::from_utf8_lossy(&line).trim_end().to_owned());
                }
                self.skipping = false;
            }
        }
    }
}

/// What is followed: one file, or every `.jsonl` file of some directories.
enum Target {
    File(PathBuf),
    Dirs(Vec<PathBuf>),
}

/// Follows a session record: wakes on inotify events for its directory (or directories) and
/// returns the complete lines appended since the last read.
pub(crate) struct Follower {
    target: Target,
    inotify: AsyncFd<OwnedFd>,
    files: BTreeMap<PathBuf, FileState>,
    max_line: usize,
}

/// The `.jsonl` files directly in `dir`.
fn jsonl_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect()
        })
        .unwrap_or_default()
}

impl Follower {
    /// Starts following `path` from its current end. The directory is created if missing (the
    /// CLI creates it on its first prompt anyway), because inotify can only watch what exists.
    /// The watch is in place before the offset is taken, so no write can fall between the two.
    pub fn new(path: PathBuf, max_line: usize) -> std::io::Result<Follower> {
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("transcript path has no directory"))?
            .to_path_buf();
        let inotify = watch(&[dir])?;
        let mut files = BTreeMap::new();
        files.insert(path.clone(), FileState::at_end_of(&path));
        Ok(Follower {
            target: Target::File(path),
            inotify,
            files,
            max_line,
        })
    }

    /// Starts following every `.jsonl` file in `dirs`: those there now from their current
    /// ends, those created later from their starts (a CLI that names its record only once the
    /// session has started: Codex's rollouts, Gemini's chats).
    pub fn in_dirs(dirs: Vec<PathBuf>, max_line: usize) -> std::io::Result<Follower> {
        let inotify = watch(&dirs)?;
        let mut files = BTreeMap::new();
        for d in &dirs {
            for f in jsonl_files(d) {
                let st = FileState::at_end_of(&f);
                files.insert(f, st);
            }
        }
        Ok(Follower {
            target: Target::Dirs(dirs),
            inotify,
            files,
            max_line,
        })
    }

    /// Waits until something in the directory changed. Cancel-safe.
    pub async fn changed(&self) {
        let Ok(mut guard) = self.inotify.readable().await else {
            // The fd cannot fail to be pollable once registered; never spin if it somehow does.
            std::future::pending::<()>().await;
            return;
        };
        // Drain the queued events: their content does not matter, only that the file may have
        // grown, and `read_lines` finds out by how much.
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a buffer we own from the inotify fd.
            let n = unsafe {
                libc::read(
                    self.inotify.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
        }
        guard.clear_ready();
    }

    /// The complete lines appended since the last call.
    pub fn read_lines(&mut self) -> Vec<String> {
        let paths: Vec<PathBuf> = match &self.target {
            Target::File(p) => vec![p.clone()],
            Target::Dirs(dirs) => dirs.iter().flat_map(|d| jsonl_files(d)).collect(),
        };
        let mut lines = Vec::new();
        for p in paths {
            self.files
                .entry(p.clone())
                .or_default()
                .read(&p, self.max_line, &mut lines);
        }
        lines
    }
}

/// An inotify descriptor watching `dirs` (created if missing) for writes and new files.
fn watch(dirs: &[PathBuf]) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: inotify_init1 has no preconditions; the fd is owned by OwnedFd from here on.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
    for dir in dirs {
        std::fs::create_dir_all(dir)?;
        let cdir = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(owned.as_raw_fd(), cdir.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
    // the same for the AsyncFd's whole life.
    unsafe { AsyncFd::register(owned) }.map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follower_returns_only_complete_new_lines() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p").join("s.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old\n").unwrap();
        let mut f = Follower::new(path.clone(), 10).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"one\ntw").unwrap();
        assert_eq!(f.read_lines(), vec!["one"]);
        file.write_all(b"o\nthis line is too long\nthree\n")
            .unwrap();
        assert_eq!(f.read_lines(), vec!["two", "three"]);
    }

    #[tokio::test]
    async fn dirs_follow_old_files_from_their_end_and_new_ones_from_their_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("chats");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("old.jsonl"), "earlier\n").unwrap();
        std::fs::write(d.join("notes.txt"), "ignored\n").unwrap();
        let mut f = Follower::in_dirs(vec![d.clone(), dir.path().join("later")], 100).unwrap();
        assert!(f.read_lines().is_empty());
        std::fs::write(d.join("new.jsonl"), "first\n").unwrap();
        let mut old = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("old.jsonl"))
            .unwrap();
        std::io::Write::write_all(&mut old, b"appended\n").unwrap();
        let mut lines = f.read_lines();
        lines.sort();
        assert_eq!(lines, vec!["appended", "first"]);
        assert!(dir.path().join("later").is_dir());
    }
}
