//! Brokers on separate hosts: each broker runs in its own network namespace (a veth pair into a
//! bridge of the test's), with its own `HOME`, fake-agent state, data directory and workspace
//! root (a private mount namespace binds its own directory over the one workspace path, so an
//! agent's `cwd` exists only on its home, as on separate machines). PostgreSQL listens on
//! loopback only, so the test relays it onto the bridge. Needs root (network namespaces) and
//! `KOKINO_TEST_DATABASE_URL`; skips loudly otherwise.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// Network namespaces, their veth pairs and the bridge joining them; removed on drop.
struct Net {
    bridge: String,
    namespaces: Vec<String>,
    /// The bridge's address (the root namespace's, where the PostgreSQL relay listens).
    gateway: String,
    /// Each namespace's address.
    addrs: Vec<String>,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Net {
    /// `n` namespaces on one bridge, or `None` when this machine cannot create them.
    fn create(n: usize) -> Option<Net> {
        let tag = std::process::id() % 10_000;
        let subnet = 100 + (std::process::id() % 150);
        let mut net = Net {
            bridge: format!("kkbr{tag}"),
            namespaces: Vec::new(),
            gateway: format!("10.213.{subnet}.1"),
            addrs: Vec::new(),
        };
        if !ip(&["link", "add", &net.bridge, "type", "bridge"]) {
            return None;
        }
        let ok = ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            &net.bridge,
        ]) && ip(&["link", "set", &net.bridge, "up"]);
        if !ok {
            return None;
        }
        for i in 0..n {
            let ns = format!("kkns{tag}-{i}");
            let (host_end, ns_end) = (format!("kkh{tag}-{i}"), format!("kkn{tag}-{i}"));
            let addr = format!("10.213.{subnet}.{}", 10 + i);
            if !ip(&["netns", "add", &ns]) {
                return None;
            }
            net.namespaces.push(ns.clone());
            let ok = ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ]) && ip(&["link", "set", &host_end, "master", &net.bridge])
                && ip(&["link", "set", &host_end, "up"])
                && ip(&["link", "set", &ns_end, "netns", &ns])
                && ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    &ns_end,
                ])
                && ip(&["-n", &ns, "link", "set", &ns_end, "up"])
                && ip(&["-n", &ns, "link", "set", "lo", "up"]);
            if !ok {
                return None;
            }
            net.addrs.push(addr);
        }
        Some(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // Deleting the namespace deletes its veth end, and with it the host end.
            ip(&["netns", "del", ns]);
        }
        ip(&["link", "del", &self.bridge]);
    }
}

/// Relays TCP connections from `listen` to `target` (PostgreSQL on loopback) in the background.
async fn relay(listen: &str, target: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

/// A fresh database, dropped at the end.
struct TestDb {
    admin: String,
    name: String,
}

impl TestDb {
    fn create(base: &str) -> TestDb {
        let name = format!(
            "kokino_homes_{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let ok = Command::new("psql")
            .args([base, "-q", "-c", &format!("CREATE DATABASE {name}")])
            .status()
            .expect("psql")
            .success();
        assert!(ok, "could not create the test database");
        TestDb {
            admin: base.to_owned(),
            name,
        }
    }
}

impl Drop for TestDb {
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

const TOKEN: &str = "cluster-secret-token";

/// A client that speaks to brokers with the cluster's token.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = match method {
            "GET" => self.client.get(url),
            _ => self.client.post(url),
        }
        .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }
    async fn get(&self, base: &str, path: &str) -> (u16, Value) {
        self.call("GET", &format!("{base}{path}"), None)
            .await
            .unwrap()
    }
    async fn post(&self, base: &str, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", &format!("{base}{path}"), Some(body))
            .await
            .unwrap()
    }
    async fn exec(&self, base: &str, agent: &str, prompt: &str) -> Result<(u16, Value), String> {
        self.call(
            "POST",
            &format!("{base}/agents/{agent}/execute"),
            Some(json!({"prompt": prompt, "lockTimeoutMs": 45000})),
        )
        .await
    }
}

fn signal(b: &Broker, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(b.pid()), sig).unwrap();
}

fn turns_of(body: &Value) -> Option<u64> {
    body["content"]
        .as_str()?
        .rsplit_once("turns=")?
        .1
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_on_separate_hosts_forward_fail_over_and_never_run_an_agent_twice() {
    let Ok(base) = std::env::var("KOKINO_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED (loudly): KOKINO_TEST_DATABASE_URL is not set");
        return;
    };
    let Some(net) = Net::create(3) else {
        eprintln!("SKIPPED (loudly): network namespaces cannot be created here (needs root and `ip netns`)");
        return;
    };
    let db = TestDb::create(&base);
    let relay_port = relay(&format!("{}:0", net.gateway), "127.0.0.1:5432").await;
    let db_url = format!(
        "postgres://postgres@{}:{relay_port}/{}",
        net.gateway, db.name
    );

    let w = World::new();
    let token = w.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let cfg = w.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nlease_ttl_ms = 1500\n[limits]\nkill_grace_ms = 300\n[doctor]\nenabled = false\n",
    )
    .unwrap();
    // The one workspace path every broker sees; each binds its own directory over it.
    let ws = w.path().join("ws");
    let shared = w.path().join("shared");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    let start = |i: usize| {
        let home = w.path().join(format!("home-{i}"));
        let own_ws = w.path().join(format!("ws-{i}"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&own_ws).unwrap();
        let bind = format!("{}:5050", net.addrs[i]);
        let advertise = format!("http://{bind}");
        let data = w.path().join(format!("data-{i}"));
        w.start_at(
            &[
                "ip",
                "netns",
                "exec",
                &net.namespaces[i],
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount --bind \"$KK_OWN_WS\" \"$KK_WS\" && exec \"$0\" \"$@\"",
            ],
            &bind,
            &[
                "--config",
                &cfg.display().to_string(),
                "--database-url",
                &db_url,
                "--data-dir",
                &data.display().to_string(),
                "--instance-id",
                &format!("h{i}"),
                "--advertise-url",
                &advertise,
                "--token-file",
                &token.display().to_string(),
            ],
            &[
                ("HOME", &home.display().to_string()),
                (
                    "KOKINO_FAKE_STATE",
                    &home.join(".kokino-fake").display().to_string(),
                ),
                ("KK_OWN_WS", &own_ws.display().to_string()),
                ("KK_WS", &ws.display().to_string()),
            ],
        )
    };
    let mut brokers: Vec<Broker> = (0..3).map(start).collect();
    let api = Api {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    };
    let urls: Vec<String> = brokers.iter().map(|b| b.base.clone()).collect();
    // Every broker announces itself.
    let mut seen = 0;
    for _ in 0..100 {
        let (_, c) = api.get(&urls[0], "/api/cluster").await;
        seen = c["brokers"].as_array().map(|b| b.len()).unwrap_or(0);
        if seen == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 3, "three brokers announced themselves");

    // Six agents, registered through broker i % 3, which becomes their home. Agents 0-2 are
    // portable and work in shared storage; 3-5 work in their home's own workspace, which no
    // other broker has.
    let agents: Vec<String> = (0..6).map(|i| format!("ag{i}")).collect();
    for (i, a) in agents.iter().enumerate() {
        let home = i % 3;
        let (cwd, portable) = if i < 3 {
            let cwd = shared.join(a);
            std::fs::create_dir_all(&cwd).unwrap();
            (cwd, true)
        } else {
            std::fs::create_dir_all(w.path().join(format!("ws-{home}")).join(a)).unwrap();
            (ws.join(a), false)
        };
        let (s, body) = api
            .post(
                &urls[home],
                "/agents/register",
                json!({"agentId": a, "type": "codex", "binary": w.bin("codex"),
                       "cwd": cwd, "portable": portable}),
            )
            .await;
        assert_eq!(s, 200, "{a}: {body}");
    }
    // The cwd of a non-portable agent exists only on its home: registering it elsewhere fails.
    let (s, body) = api
        .post(
            &urls[1],
            "/agents/register",
            json!({"agentId": "nowhere", "type": "codex", "binary": w.bin("codex"),
                   "cwd": ws.join("ag3")}),
        )
        .await;
    assert_eq!(s, 400, "ag3's workspace is on h0 only: {body}");
    let (_, cluster) = api.get(&urls[2], "/api/cluster").await;
    for (i, a) in agents.iter().enumerate() {
        let home = cluster["homes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["agentId"] == *a)
            .unwrap_or_else(|| panic!("{a} has a home: {cluster}"));
        assert_eq!(home["home"], format!("h{}", i % 3), "{cluster}");
    }

    // Phase 1, forwarding keeps the conversation: three turns per agent, each through another
    // broker; the fake agent counts the turns its session held (the continuity witness).
    let mut phase1 = Vec::new();
    for a in &agents {
        let (api, urls, a) = (api.clone(), urls.clone(), a.clone());
        phase1.push(tokio::spawn(async move {
            for t in 0..3u64 {
                let (s, body) = api
                    .exec(
                        &urls[(t as usize + 1) % 3],
                        &a,
                        &format!("{a} turn-{t} fake:turns"),
                    )
                    .await
                    .unwrap();
                assert_eq!(s, 200, "{a} turn {t}: {body}");
                assert_eq!(turns_of(&body), Some(t), "{a} turn {t}: {body}");
            }
        }));
    }
    for t in phase1 {
        t.await.unwrap();
    }

    // Status answers the same everywhere: while ag0 runs on h0, every broker says so.
    let slow = {
        let (api, url) = (api.clone(), urls[1].clone());
        tokio::spawn(async move { api.exec(&url, "ag0", "slow fake:sleep=1.5").await })
    };
    let mut agreed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut all = true;
        for url in &urls {
            let (_, sessions) = api.get(url, "/agents/sessions/status").await;
            let (_, procs) = api.get(url, "/agents/processes/status").await;
            let executing = sessions
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["agentId"] == "ag0" && s["executing"] == true);
            let process = procs
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["agentId"] == "ag0");
            all &= executing && process;
        }
        if all {
            agreed = true;
            break;
        }
    }
    assert!(agreed, "every broker reports ag0 executing on its home");
    let (s, body) = slow.await.unwrap().unwrap();
    assert_eq!(s, 200, "{body}");
    // Logs are read from the home, through any broker.
    let (s, logs) = api.get(&urls[2], "/agents/ag0/logs?lines=50").await;
    assert_eq!(s, 200, "{logs}");
    assert!(logs["lines"].as_u64().unwrap_or(0) > 0, "{logs}");

    // Phase 2, load over all brokers; mid-run, kill h0 (home of ag0 and ag3) and pause h1
    // (home of ag1 and ag4) for longer than a lease.
    let mut tasks = Vec::new();
    for n in 0..36 {
        let (api, url, agent) = (api.clone(), urls[n % 3].clone(), agents[n % 6].clone());
        tasks.push(tokio::spawn(async move {
            let r = api
                .exec(&url, &agent, &format!("load {n} fake:sleep=0.2"))
                .await;
            (n, agent, r)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    brokers[0].kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&brokers[1], nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(4000)).await;
    signal(&brokers[1], nix::sys::signal::Signal::SIGCONT);

    let (mut answered, mut clear_errors) = (0, 0);
    let mut codes: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let (n, agent, r) = t.await.unwrap();
        match r {
            Ok((200, _)) => answered += 1,
            Ok((status, body)) => {
                assert!(
                    body["code"].is_string() && body["error"].is_string(),
                    "request {n} ({agent}): {status} {body}"
                );
                *codes
                    .entry(body["code"].as_str().unwrap().to_owned())
                    .or_default() += 1;
                clear_errors += 1;
            }
            // Only the killed broker's own clients may lose their connection.
            Err(e) => {
                assert_eq!(n % 3, 0, "request {n} to a live broker got no answer: {e}");
                clear_errors += 1;
            }
        }
    }
    eprintln!("phase 2: {answered} answered, {clear_errors} clear errors {codes:?}");
    assert!(answered >= 12, "most requests were answered ({answered})");

    // No agent ever ran twice at once: per working directory, witnessed runs never overlap.
    let lines = w.witness_lines();
    let ends: HashMap<i32, u128> = lines
        .iter()
        .filter(|(k, ..)| k == "end")
        .map(|(_, pid, t, _)| (*pid, *t))
        .collect();
    let mut runs: HashMap<String, Vec<(u128, u128)>> = HashMap::new();
    for (kind, pid, t, rest) in &lines {
        if kind == "start" {
            let cwd = rest
                .rsplit_once(' ')
                .map(|(c, _)| c.to_owned())
                .unwrap_or_default();
            let end = ends.get(pid).copied().unwrap_or(u128::MAX);
            runs.entry(cwd).or_default().push((*t, end));
        }
    }
    for (cwd, mut spans) in runs {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "two runs in {cwd} overlapped: {pair:?}"
            );
        }
    }

    // The portable agent of the dead home continues its conversation on the broker that takes
    // it over: a new CLI session seeded with the stored turns (rehydration), then resumed.
    let (s, first) = api
        .exec(&urls[2], "ag0", "after failover fake:turns")
        .await
        .unwrap();
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["metadata"]["rehydrated"], true, "{first}");
    assert!(
        first["content"].as_str().unwrap().contains("ag0 turn-2"),
        "the seeded session carries the earlier turns: {first}"
    );
    let (s, next) = api
        .exec(&urls[2], "ag0", "and then fake:turns")
        .await
        .unwrap();
    assert_eq!(s, 200, "{next}");
    assert_eq!(turns_of(&next), Some(1), "{next}");
    let (_, cluster) = api.get(&urls[2], "/api/cluster").await;
    let home_of = |c: &Value, a: &str| {
        c["homes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["agentId"] == a)
            .unwrap()["home"]
            .clone()
    };
    assert_eq!(home_of(&cluster, "ag0"), "h2", "{cluster}");

    // The non-portable agent of the dead home cannot run elsewhere: a clear 503 naming its home.
    let r = api
        .client
        .post(format!("{}/agents/ag3/execute", urls[2]))
        .bearer_auth(TOKEN)
        .json(&json!({"prompt": "while h0 is dead"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "AGENT_HOME_UNAVAILABLE", "{body}");
    assert_eq!(body["details"]["home"], "h0", "{body}");

    // h0 returns (same instance id, same HOME and workspace): it serves ag3 again, continuing
    // its CLI session, and accepts that ag0 now lives on h2 (it forwards there).
    brokers[0] = start(0);
    let (s, back) = api
        .exec(&urls[1], "ag3", "home again fake:turns")
        .await
        .unwrap();
    assert_eq!(s, 200, "{back}");
    assert!(
        turns_of(&back).unwrap_or(0) >= 3,
        "ag3 resumed its own session: {back}"
    );
    let (s, fwd) = api
        .exec(&urls[0], "ag0", "through the old home fake:turns")
        .await
        .unwrap();
    assert_eq!(s, 200, "{fwd}");
    assert_eq!(
        turns_of(&fwd),
        Some(2),
        "served by ag0's new home h2: {fwd}"
    );

    // An operator moves an agent; the next request through any broker runs on the new home.
    let (s, moved) = api
        .post(
            &urls[1],
            "/agents/ag5/move",
            json!({"to": "h1", "endSession": true}),
        )
        .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!(
        (moved["from"].clone(), moved["to"].clone()),
        (json!("h2"), json!("h1"))
    );
    std::fs::create_dir_all(w.path().join("ws-1").join("ag5")).unwrap();
    let (s, after) = api.exec(&urls[0], "ag5", "moved fake:turns").await.unwrap();
    assert_eq!(s, 200, "{after}");
    assert_eq!(
        turns_of(&after),
        Some(0),
        "a new session on the new home: {after}"
    );

    for b in brokers.iter_mut() {
        if b.child.is_some() {
            let _ = tokio::task::block_in_place(|| b.stop());
        }
    }
}

/// Every runnable command of docs/ops/SCALING.md (the blocks marked `doc-test: homes`), run as
/// written against two brokers on one PostgreSQL: register with a home, look at the cluster,
/// move an agent, drain a broker, check health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaling_guide_runs_as_written() {
    let Ok(base) = std::env::var("KOKINO_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED (loudly): KOKINO_TEST_DATABASE_URL is not set");
        return;
    };
    let db = TestDb::create(&base);
    let url = match base.rfind('/') {
        Some(i) => format!("{}/{}", &base[..i], db.name),
        None => panic!("unexpected URL {base}"),
    };
    let w = World::new();
    let token = w.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let cfg = w.path().join("c.toml");
    std::fs::write(&cfg, "[doctor]\nenabled = false\n").unwrap();
    let brokers: Vec<Broker> = ["broker-a", "broker-b"]
        .iter()
        .map(|id| {
            let bind = format!("127.0.0.1:{}", free_port());
            let data = w.path().join(format!("data-{id}"));
            w.start_at(
                &[],
                &bind,
                &[
                    "--config",
                    &cfg.display().to_string(),
                    "--database-url",
                    &url,
                    "--data-dir",
                    &data.display().to_string(),
                    "--instance-id",
                    id,
                    "--advertise-url",
                    &format!("http://{bind}"),
                    "--token-file",
                    &token.display().to_string(),
                ],
                &[],
            )
        })
        .collect();
    let api = Api {
        client: reqwest::Client::new(),
    };
    let work = w.path().join("work-reviewer");
    std::fs::create_dir_all(&work).unwrap();
    let (s, body) = api
        .post(
            &brokers[1].base,
            "/agents/register",
            json!({"agentId": "drainme", "type": "codex", "cwd": w.work()}),
        )
        .await;
    assert_eq!(s, 200, "{body}");

    let doc = std::fs::read_to_string(workspace_root().join("docs/ops/SCALING.md")).unwrap();
    let blocks: Vec<String> = shell_blocks(&doc)
        .into_iter()
        .filter(|(c, _)| c.as_deref() == Some("<!-- doc-test: homes -->"))
        .map(|(_, b)| b)
        .collect();
    assert_eq!(blocks.len(), 4, "the guide's runnable blocks");
    let mut outputs = Vec::new();
    for block in &blocks {
        let (ok, out, err) = run_doc_snippet_in(
            &brokers[0],
            block,
            &[("/srv/kokino/work/reviewer", work.display().to_string())],
            &[("KOKINO_TOKEN", TOKEN.to_owned())],
            None,
        );
        assert!(ok, "{block}\nstdout: {out}\nstderr: {err}");
        outputs.push(out);
    }
    assert!(outputs[0].starts_with("reviewer\n"), "{}", outputs[0]);
    assert!(
        outputs[0].contains(r#"{"instanceId":"broker-a","alive":true,"agents":0}"#)
            && outputs[0].contains(r#"{"instanceId":"broker-b","alive":true,"agents":2}"#),
        "{}",
        outputs[0]
    );
    assert_eq!(outputs[1], "{\"from\":\"broker-b\",\"to\":\"broker-a\"}\n");
    assert_eq!(
        outputs[2],
        "{\"agentId\":\"drainme\",\"to\":\"broker-a\"}\n"
    );
    assert_eq!(outputs[3], "{\"status\":\"ok\",\"store\":\"postgres\"}\n");
    let (_, cluster) = api.get(&brokers[1].base, "/api/cluster").await;
    assert!(
        cluster["homes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["home"] == "broker-a"),
        "broker-b is drained: {cluster}"
    );
    // And the drained agents run on broker-a, whichever broker is asked.
    let (s, body) = api
        .exec(&brokers[1].base, "reviewer", "after the drain")
        .await
        .unwrap();
    assert_eq!(s, 200, "{body}");
}
