//! Session state kept on disk between runs, so `--resume` and `--session-id` behave like the real
//! CLIs: reuse of a claude session id fails, unknown resume ids fail, resumed sessions grow.
//!
//! Layout under the state root (`$KOKINO_FAKE_STATE`, else `$HOME/.kokino-fake`):
//!
//! * `claude/<cwd key>/<session id>.json` — claude keeps sessions per working directory (the real
//!   one uses `~/.claude/projects/<cwd with non-alphanumerics replaced by '-'>/`), so a session is
//!   only found again from the same cwd.
//! * `codex/<thread id>.json`, `gemini/<session id>.json`, `droid/<session id>.json` — global,
//!   with the cwd recorded inside for `resume --last` / `--resume latest`.
//!
//! Every file is written to a temporary name in the same directory and then renamed (or, for a
//! brand-new session, hard-linked, which fails if the name already exists), so concurrent fake
//! agents never see or leave a half-written file.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One conversation as the fake agent remembers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub personality: String,
    pub cwd: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Every prompt sent in this session, oldest first; the current run's prompt is included.
    pub turns: Vec<Turn>,
}

/// One prompt of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Turn {
    pub prompt: String,
    pub at_ms: i64,
    pub pid: u32,
}

/// The state directory.
pub struct Store {
    root: PathBuf,
}

/// Why a new session could not be created.
pub enum CreateError {
    /// A session with this id already exists (for claude: in this cwd).
    Exists,
    Io(io::Error),
}

impl Store {
    /// Opens the state root named by the environment; the directory is created lazily on write.
    pub fn from_env() -> Store {
        let root = match std::env::var_os("KOKINO_FAKE_STATE") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => match std::env::var_os("HOME") {
                Some(h) if !h.is_empty() => PathBuf::from(h).join(".kokino-fake"),
                _ => std::env::temp_dir().join(".kokino-fake"),
            },
        };
        Store { root }
    }

    fn dir(&self, personality: &str, cwd: &str) -> PathBuf {
        let base = self.root.join(personality);
        if personality == "claude" {
            base.join(cwd_key(cwd))
        } else {
            base
        }
    }

    /// Where this personality's sessions for `cwd` live (named in gemini's resume error).
    pub fn dir_of(&self, personality: &str, cwd: &str) -> PathBuf {
        self.dir(personality, cwd)
    }

    fn path(&self, personality: &str, cwd: &str, id: &str) -> Option<PathBuf> {
        safe_id(id).then(|| self.dir(personality, cwd).join(format!("{id}.json")))
    }

    /// Loads a session, or `None` if it does not exist (or the id cannot be a file name).
    pub fn load(&self, personality: &str, cwd: &str, id: &str) -> Option<Session> {
        let path = self.path(personality, cwd, id)?;
        let bytes = fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records a new session; fails with [`CreateError::Exists`] if the id is taken, atomically
    /// even against another fake agent creating the same id at the same moment.
    pub fn create(&self, s: &Session) -> Result<(), CreateError> {
        let Some(path) = self.path(&s.personality, &s.cwd, &s.id) else {
            return Err(CreateError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "session id is not a valid file name",
            )));
        };
        let tmp = write_temp(&path, s).map_err(CreateError::Io)?;
        let res = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CreateError::Exists),
            Err(e) => Err(CreateError::Io(e)),
        }
    }

    /// Replaces a session file atomically (temp file + rename).
    pub fn save(&self, s: &Session) -> io::Result<()> {
        let path = self
            .path(&s.personality, &s.cwd, &s.id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad session id"))?;
        let tmp = write_temp(&path, s)?;
        fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// The most recently updated session of this personality started in `cwd`.
    pub fn latest(&self, personality: &str, cwd: &str) -> Option<Session> {
        let entries = fs::read_dir(self.dir(personality, cwd)).ok()?;
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Session>(&b).ok())
            .filter(|s| s.cwd == cwd)
            .max_by_key(|s| s.updated_ms)
    }
}

fn write_temp(path: &Path, s: &Session) -> io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.unwrap_or_default(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let mut f = fs::File::create(&tmp)?;
    let bytes = serde_json::to_vec(s).map_err(io::Error::other)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    Ok(tmp)
}

/// The directory name claude uses for a project: every non-alphanumeric character becomes '-'.
pub fn cwd_key(cwd: &str) -> String {
    cwd.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Ids become file names, so anything that could escape the directory is treated as unknown.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> Session {
        Session {
            id: id.into(),
            personality: "claude".into(),
            cwd: "/tmp/x y".into(),
            created_ms: 1,
            updated_ms: 1,
            turns: vec![],
        }
    }

    #[test]
    fn create_is_exclusive_and_save_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store {
            root: dir.path().to_path_buf(),
        };
        let mut s = session("abc");
        assert!(store.create(&s).is_ok());
        assert!(matches!(store.create(&s), Err(CreateError::Exists)));
        s.updated_ms = 5;
        store.save(&s).unwrap();
        assert_eq!(
            store.load("claude", "/tmp/x y", "abc").unwrap().updated_ms,
            5
        );
        assert!(store.load("claude", "/tmp/other", "abc").is_none());
        assert_eq!(store.latest("claude", "/tmp/x y").unwrap().id, "abc");
        assert!(store.load("claude", "/tmp/x y", "../abc").is_none());
    }

    #[test]
    fn cwd_key_matches_claude() {
        assert_eq!(cwd_key("/home/user/project"), "-home-user-project");
    }
}
