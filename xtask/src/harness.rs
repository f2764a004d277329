//! What `cargo xtask bench` and `cargo xtask chaos` share: a temporary world with the fake
//! agent as every CLI, real brokers started from the built binaries, a few lines of blocking
//! HTTP/1.1 over keep-alive sockets (so that the client costs as little as possible and xtask
//! stays free of an async runtime), and throw-away PostgreSQL databases.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Builds the broker and the fake agent in release mode and returns their directory.
pub(crate) fn build_release() -> Result<PathBuf> {
    // Two builds compared in turn on one machine (the noise between runs is larger than many
    // changes): each one's binaries copied to a directory of their own.
    if let Some(dir) = std::env::var_os("KOKINO_BENCH_BIN_DIR") {
        let dir = PathBuf::from(dir);
        println!(
            "==> using the binaries in {} (KOKINO_BENCH_BIN_DIR)",
            dir.display()
        );
        if !dir.join("kokino-broker").exists() {
            bail!("{} has no kokino-broker", dir.display());
        }
        return Ok(dir);
    }
    let root = crate::workspace_root();
    println!("==> building release binaries");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "kokino-broker",
            "-p",
            "kokino-fake-agent",
        ])
        .status()?;
    if !status.success() {
        bail!("release build failed");
    }
    release_dir(&root)
}

/// Stands for the started broker's own `http://` address in [`World::start_broker_with`].
pub(crate) const OWN_URL: &str = "@own-url@";

pub(crate) fn release_dir(root: &Path) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("release");
    if !dir.join("kokino-broker").exists() {
        bail!("{} has no kokino-broker", dir.display());
    }
    Ok(dir)
}

/// A temporary directory with the fake agent linked as `claude`, a state directory, and a data
/// directory for the broker.
pub(crate) struct World {
    pub(crate) dir: PathBuf,
    pub(crate) bins: PathBuf,
}

impl World {
    pub(crate) fn new(bins: &Path) -> Result<World> {
        Self::named(bins, "bench")
    }

    /// A world in a temporary directory named after the task (`kokino-<task>-<pid>`).
    pub(crate) fn named(bins: &Path, task: &str) -> Result<World> {
        let dir = std::env::temp_dir().join(format!("kokino-{task}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::create_dir_all(dir.join("work"))?;
        std::os::unix::fs::symlink(bins.join("kokino-fake-agent"), dir.join("bin/claude"))?;
        std::os::unix::fs::symlink(bins.join("kokino-fake-agent"), dir.join("bin/codex"))?;
        std::fs::create_dir_all(dir.join("home"))?;
        Ok(World {
            dir,
            bins: bins.to_path_buf(),
        })
    }

    pub(crate) fn claude(&self) -> PathBuf {
        self.dir.join("bin/claude")
    }

    pub(crate) fn start_broker(&self) -> Result<Broker> {
        self.start_broker_with(&[])
    }

    /// A broker with extra flags (a database URL, its own data directory, an instance id).
    /// [`OWN_URL`] in `extra` becomes the broker's own address (for `--advertise-url`).
    pub(crate) fn start_broker_with(&self, extra: &[String]) -> Result<Broker> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let extra: Vec<String> = extra
            .iter()
            .map(|a| {
                if a == OWN_URL {
                    format!("http://127.0.0.1:{port}")
                } else {
                    a.clone()
                }
            })
            .collect();
        let child = Command::new(self.bins.join("kokino-broker"))
            .args(["--bind", &format!("127.0.0.1:{port}")])
            // The agents name the fake agent in this world's bin directory as their binary.
            .arg("--allow-binary")
            .arg(self.dir.join("bin"))
            .args(if extra.iter().any(|a| a == "--data-dir") {
                Vec::new()
            } else {
                vec![
                    "--data-dir".to_owned(),
                    self.dir.join("data").display().to_string(),
                ]
            })
            .args(&extra)
            .env("KOKINO_FAKE_STATE", self.dir.join("state"))
            .env("KOKINO_FAKE_LOG", self.dir.join("witness.log"))
            // KOKINO_BENCH_LOG=kokino_service=debug shows where each execution's time goes
            // (the "execution phases" line).
            .env(
                "KOKINO_LOG",
                std::env::var("KOKINO_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start kokino-broker")?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                bail!("the broker did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Broker { child, addr })
    }

    pub(crate) fn register(&self, broker: &Broker, agent: &str) -> Result<()> {
        let body = serde_json::json!({
            "agentId": agent, "type": "claude-code",
            "binary": self.claude(), "cwd": self.dir.join("work"),
        });
        let mut c = Client::connect(&broker.addr)?;
        let (status, text) = c.post("/agents/register", &body.to_string())?;
        if status != 200 {
            bail!("register {agent}: {status} {text}");
        }
        Ok(())
    }

    /// The baseline: spawn the same fake agent the broker would, with the same flags, feed it the
    /// prompt on stdin and read its output to the end.
    pub(crate) fn direct_spawn(&self) -> Result<Duration> {
        self.direct_spawn_with("hello")
    }

    /// [`World::direct_spawn`] with another prompt (`fake:` tokens script the fake agent).
    pub(crate) fn direct_spawn_with(&self, prompt: &str) -> Result<Duration> {
        let started = Instant::now();
        let mut child = Command::new(self.claude())
            .args([
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--session-id",
            ])
            .arg(uuid::Uuid::new_v4().to_string())
            .current_dir(self.dir.join("work"))
            .env("KOKINO_FAKE_STATE", self.dir.join("state"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        child.stdin.take().unwrap().write_all(prompt.as_bytes())?;
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out)?;
        let status = child.wait()?;
        if !status.success() || !out.windows(6).any(|w| w == b"echo: ") {
            bail!("direct spawn failed: {status}");
        }
        Ok(started.elapsed())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) struct Broker {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Broker {
    pub(crate) fn peak_rss_mb(&self) -> f64 {
        proc_status_kb(self.child.id(), "VmHWM:") as f64 / 1024.0
    }
    pub(crate) fn rss_mb(&self) -> f64 {
        proc_status_kb(self.child.id(), "VmRSS:") as f64 / 1024.0
    }
    /// The broker's CPU time so far: its own (user + system), and that of its children it has
    /// reaped (the supervisors, which include the CLIs they reaped).
    pub(crate) fn cpu(&self) -> Cpu {
        Cpu::of(&format!("/proc/{}/stat", self.child.id()))
    }
    /// The CPU time of the broker's spawner (the child started with `--kokino-spawner`): its
    /// own, and that of the CLIs it started and reaped. Zero when it has none.
    pub(crate) fn spawner_cpu(&self) -> Cpu {
        let me = self.child.id().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if ppid == Some(me.as_str())
                && cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == b"--kokino-spawner")
            {
                return Cpu::of(&format!("/proc/{pid}/stat"));
            }
        }
        Cpu::default()
    }
    /// The resident memory of the broker's live children (its spawner, and the supervisors of
    /// running CLIs).
    pub(crate) fn children_rss_mb(&self) -> f64 {
        let me = self.child.id().to_string();
        let mut kb = 0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4 (ppid) follows the command name, which is in parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid == Some(me.as_str()) {
                kb += proc_status_kb(pid, "VmRSS:");
            }
        }
        kb as f64 / 1024.0
    }
}

/// CPU time from a `/proc/…/stat` file, in seconds: the process's own (utime + stime) and its
/// reaped children's (cutime + cstime).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cpu {
    pub(crate) own: f64,
    pub(crate) children: f64,
}

impl Cpu {
    fn of(stat_path: &str) -> Cpu {
        // Fields 14-17 (utime, stime, cutime, cstime) in clock ticks; USER_HZ is 100 on Linux
        // whatever the kernel's own tick rate.
        let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
        let fields: Vec<f64> = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .map(|f| f.parse().unwrap_or(0.0))
                    .collect()
            })
            .unwrap_or_default();
        let tick = |i: usize| fields.get(i - 3).copied().unwrap_or(0.0) / 100.0;
        Cpu {
            own: tick(14) + tick(15),
            children: tick(16) + tick(17),
        }
    }

    /// This process (xtask): its children's figure counts the CLIs it spawned and reaped.
    pub(crate) fn this_process() -> Cpu {
        Cpu::of("/proc/self/stat")
    }

    pub(crate) fn since(self, before: Cpu) -> Cpu {
        Cpu {
            own: self.own - before.own,
            children: self.children - before.children,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Minimal HTTP/1.1 over one keep-alive connection.
pub(crate) struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    addr: String,
}

impl Client {
    pub(crate) fn connect(addr: &str) -> Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            addr: addr.to_owned(),
        })
    }

    pub(crate) fn post(&mut self, path: &str, body: &str) -> Result<(u16, String)> {
        self.request("POST", path, body)
    }

    pub(crate) fn get(&mut self, path: &str) -> Result<(u16, String)> {
        self.request("GET", path, "")
    }

    /// One request and its answer. `Host` is the address connected to, as any HTTP client
    /// sends it (the broker refuses names it does not serve).
    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String)> {
        write!(
            self.writer,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("bad status line")?;
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf)?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

/// A throw-away database on the benchmark's PostgreSQL server.
pub(crate) struct BenchDb {
    admin: String,
    name: String,
    pub(crate) url: String,
}

impl BenchDb {
    pub(crate) fn create(admin: &str) -> Result<BenchDb> {
        let name = format!("kokino_bench_{}", std::process::id());
        let _ = Command::new("psql")
            .args([
                admin,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ])
            .status();
        let ok = Command::new("psql")
            .args([admin, "-q", "-c", &format!("CREATE DATABASE {name}")])
            .status()?;
        if !ok.success() {
            bail!("could not create the benchmark database with psql");
        }
        let cut = admin
            .rfind('/')
            .context("database URL without a database name")?;
        Ok(BenchDb {
            url: format!("{}/{name}", &admin[..cut]),
            admin: admin.to_owned(),
            name,
        })
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .status();
    }
}
