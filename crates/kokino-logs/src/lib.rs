//! Per-agent CLI output logs.
//!
//! One file per agent under `<data dir>/logs/<agent>.log`, mode 0600 (CLI output can contain
//! anything the agent read), one line per CLI output line prefixed with the time and the stream.
//! When a file passes the size limit it is renamed with a timestamp and compressed with gzip in
//! the background; compressed files older than the retention are deleted. `tail` reads from the
//! end of the file, so asking for the last 100 lines of a 50 MB log reads kilobytes, not 50 MB.

#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use kokino_core::{AgentId, LineSink, OutputStream};
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("log directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Settings and entry point for all agents' logs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentLogs {
    dir: PathBuf,
    max_bytes: u64,
    retention: Duration,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogStatus {
    pub agent_id: String,
    pub size_bytes: u64,
    pub rotated_files: usize,
    pub last_modified: Option<DateTime<Utc>>,
    pub path: String,
}

/// What a rotation or prune pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    pub rotated: Vec<String>,
    pub deleted: Vec<String>,
}

impl AgentLogs {
    pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64, retention: Duration) -> Self {
        AgentLogs {
            dir: dir.into(),
            max_bytes: max_bytes.max(1024),
            retention,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, agent: &AgentId) -> PathBuf {
        // Agent ids are validated to a file-name-safe alphabet, so this cannot escape the dir.
        self.dir.join(format!("{agent}.log"))
    }

    /// A writer appending to the agent's log. Failures to write a log never fail an execution:
    /// they are reported once in the broker's own log.
    pub fn writer(&self, agent: &AgentId) -> AgentLogWriter {
        AgentLogWriter {
            logs: self.clone(),
            path: self.path_of(agent),
            file: None,
            size: 0,
            warned: false,
        }
    }

    /// The last `lines` lines of the agent's current log (empty when there is none).
    pub fn tail(&self, agent: &AgentId, lines: usize) -> Result<String, LogError> {
        let path = self.path_of(agent);
        match File::open(&path) {
            Ok(f) => tail_file(f, lines).map_err(io_err(&path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// One entry per agent that has a log (current or rotated), sorted by agent id.
    pub fn status(&self) -> Result<Vec<LogStatus>, LogError> {
        let mut by_agent: std::collections::BTreeMap<String, LogStatus> = Default::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((agent, rotated)) = parse_name(&name) else {
                continue;
            };
            let st = by_agent
                .entry(agent.to_owned())
                .or_insert_with(|| LogStatus {
                    agent_id: agent.to_owned(),
                    size_bytes: 0,
                    rotated_files: 0,
                    last_modified: None,
                    path: self.dir.join(format!("{agent}.log")).display().to_string(),
                });
            if rotated {
                st.rotated_files += 1;
            } else if let Ok(meta) = entry.metadata() {
                st.size_bytes = meta.len();
                st.last_modified = meta.modified().ok().map(DateTime::<Utc>::from);
            }
        }
        Ok(by_agent.into_values().collect())
    }

    /// Rotates every current log at or over the size limit (all of them with `force`).
    pub fn rotate_all(&self, force: bool) -> Result<Maintenance, LogError> {
        let mut done = Maintenance::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(done),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !matches!(parse_name(&name), Some((_, false))) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if size > 0 && (force || size >= self.max_bytes) {
                let rotated = rotate(&entry.path(), true).map_err(io_err(&entry.path()))?;
                done.rotated.push(rotated.display().to_string());
            }
        }
        Ok(done)
    }

    /// Deletes rotated files older than the retention (by modification time), as of `now`.
    /// With `dry_run`, only says what it would delete.
    pub fn prune(&self, now: SystemTime, dry_run: bool) -> Result<Maintenance, LogError> {
        let mut done = Maintenance::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(done),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !matches!(parse_name(&name), Some((_, true))) {
                continue;
            }
            let modified = entry.metadata().and_then(|m| m.modified());
            let old = modified
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > self.retention);
            if old {
                if !dry_run {
                    fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                }
                done.deleted.push(entry.path().display().to_string());
            }
        }
        Ok(done)
    }

    /// Deletes every log of the agent (used when an agent is purged).
    pub fn remove(&self, agent: &AgentId) -> Result<(), LogError> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if parse_name(&name).is_some_and(|(a, _)| a == agent.as_str()) {
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            }
        }
        Ok(())
    }
}

/// `<agent>.log` → (agent, false); `<agent>.log.<stamp>[.gz]` → (agent, true).
fn parse_name(name: &str) -> Option<(&str, bool)> {
    if let Some(agent) = name.strip_suffix(".log") {
        return Some((agent, false));
    }
    let idx = name.find(".log.")?;
    Some((&name[..idx], true))
}

/// Renames the file aside with a timestamp and compresses it (in a background thread when
/// `background`, so a writer never waits for gzip). Returns the final path.
fn rotate(path: &Path, background: bool) -> io::Result<PathBuf> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let aside = PathBuf::from(format!("{}.{stamp}", path.display()));
    fs::rename(path, &aside)?;
    let gz = PathBuf::from(format!("{}.gz", aside.display()));
    let target = gz.clone();
    let job = move || {
        if let Err(e) = compress(&aside, &target) {
            tracing::warn!(error = %e, path = %aside.display(), "could not compress a rotated log");
        }
    };
    if background {
        std::thread::spawn(job);
    } else {
        job();
    }
    Ok(gz)
}

fn compress(src: &Path, dst: &Path) -> io::Result<()> {
    let mut input = File::open(src)?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    io::copy(&mut input, &mut enc)?;
    enc.finish()?.sync_all()?;
    fs::remove_file(src)
}

fn tail_file(mut f: File, lines: usize) -> io::Result<String> {
    if lines == 0 {
        return Ok(String::new());
    }
    let len = f.seek(SeekFrom::End(0))?;
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    const CHUNK: u64 = 64 * 1024;
    // Read backwards until the buffer holds more newlines than lines asked for (the file's
    // last byte is normally a newline, which does not start a line).
    loop {
        let newlines = buf.iter().filter(|&&b| b == b'\n').count();
        if pos == 0 || newlines > lines {
            break;
        }
        let step = CHUNK.min(pos);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let mut chunk = vec![0; step as usize];
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let text = String::from_utf8_lossy(&buf);
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let all: Vec<&str> = trimmed.split('\n').collect();
    let start = all.len().saturating_sub(lines);
    // When we stopped mid-file, the first piece may be a partial line; it is only kept if it
    // is within the lines asked for, which means we reached the start of the file.
    Ok(all[start..].join("\n"))
}

/// Appends one agent's lines. Opened lazily on the first line.
pub struct AgentLogWriter {
    logs: AgentLogs,
    path: PathBuf,
    file: Option<File>,
    size: u64,
    warned: bool,
}

impl AgentLogWriter {
    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            fs::create_dir_all(&self.logs.dir)?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }

    fn write_line(&mut self, stream: OutputStream, line: &str) -> io::Result<()> {
        let stamp = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut record = String::with_capacity(line.len() + 40);
        record.push_str(&stamp);
        record.push(' ');
        record.push_str(stream.as_str());
        record.push(' ');
        record.push_str(line);
        record.push('\n');
        let file = self.open()?;
        // One write per line, so lines of concurrent writers never interleave mid-line.
        file.write_all(record.as_bytes())?;
        self.size += record.len() as u64;
        if self.size >= self.logs.max_bytes {
            self.file = None;
            rotate(&self.path, true)?;
            self.size = 0;
        }
        Ok(())
    }
}

impl LineSink for AgentLogWriter {
    fn line(&mut self, stream: OutputStream, line: &str) {
        if let Err(e) = self.write_line(stream, line) {
            if !self.warned {
                self.warned = true;
                tracing::warn!(error = %e, path = %self.path.display(), "cannot write the agent log");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn writes_lines_with_time_and_stream_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AgentLogs::new(
            dir.path().join("logs"),
            1 << 20,
            AgentLogs::DEFAULT_RETENTION,
        );
        let mut w = logs.writer(&id("a"));
        w.line(OutputStream::Stdout, r#"{"type":"init"}"#);
        w.line(OutputStream::Stderr, "warning: colours");
        let text = fs::read_to_string(logs.path_of(&id("a"))).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].ends_with(r#" stdout {"type":"init"}"#),
            "{}",
            lines[0]
        );
        assert!(lines[1].ends_with(" stderr warning: colours"));
        assert!(DateTime::parse_from_rfc3339(lines[0].split(' ').next().unwrap()).is_ok());
        let mode = fs::metadata(logs.path_of(&id("a")))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn tail_reads_the_last_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AgentLogs::new(dir.path(), 1 << 30, AgentLogs::DEFAULT_RETENTION);
        let mut w = logs.writer(&id("t"));
        for i in 0..50_000 {
            w.line(OutputStream::Stdout, &format!("line {i}"));
        }
        let tail = logs.tail(&id("t"), 3).unwrap();
        let got: Vec<&str> = tail
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(got, ["49997", "49998", "49999"]);
        assert_eq!(
            logs.tail(&id("t"), 100_000).unwrap().lines().count(),
            50_000
        );
        assert_eq!(logs.tail(&id("none"), 10).unwrap(), "");
    }

    #[test]
    fn rotation_compresses_and_prune_deletes_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AgentLogs::new(dir.path(), 4096, Duration::from_secs(3600));
        let mut w = logs.writer(&id("r"));
        for i in 0..200 {
            w.line(OutputStream::Stdout, &format!("{i:080}"));
        }
        // Compression runs in the background; wait for it (bounded).
        let gz_count = || {
            fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".gz"))
                .count()
        };
        for _ in 0..200 {
            let pending = fs::read_dir(dir.path()).unwrap().flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.contains(".log.") && !n.ends_with(".gz")
            });
            if !pending && gz_count() > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gz_count() >= 3, "several rotations of a 4 KB limit");
        let st = logs.status().unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].rotated_files, gz_count());
        assert!(st[0].size_bytes < 4096);

        // A rotated file decompresses to whole lines.
        let gz = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".gz"))
            .unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(gz.path()).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert!(text
            .lines()
            .all(|l| l.ends_with(&"0".repeat(10)) || l.len() > 80));

        let nothing = logs.prune(SystemTime::now(), false).unwrap();
        assert!(nothing.deleted.is_empty(), "young files stay");
        let later = SystemTime::now() + Duration::from_secs(7200);
        let dry = logs.prune(later, true).unwrap();
        assert_eq!(dry.deleted.len(), gz_count(), "dry run lists them");
        assert_eq!(gz_count(), dry.deleted.len(), "and deletes nothing");
        let done = logs.prune(later, false).unwrap();
        assert_eq!(done.deleted.len(), dry.deleted.len());
        assert_eq!(gz_count(), 0);
        assert!(
            logs.path_of(&id("r")).exists(),
            "the current log is never pruned"
        );
    }

    #[test]
    fn forced_rotation_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AgentLogs::new(dir.path(), 1 << 20, AgentLogs::DEFAULT_RETENTION);
        logs.writer(&id("f")).line(OutputStream::Stdout, "x");
        assert!(logs.rotate_all(false).unwrap().rotated.is_empty());
        assert_eq!(logs.rotate_all(true).unwrap().rotated.len(), 1);
        logs.remove(&id("f")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        logs.remove(&id("f")).unwrap();
        assert!(logs.status().unwrap().is_empty());
    }
}
