//! Alerts reach the people the escalation table names: every alert rule of
//! `deploy/prometheus/kokino-alerts.yml` carries the routing labels, and
//! `deploy/alertmanager/alertmanager.yml` routes each one (read from the rules file, never from
//! a list in this test) to its team's channel and its lead, checked with `amtool`. A real
//! Alertmanager proves the inhibitions with the labels the rules really carry, and the routing
//! commands of the operator docs run as written.
//!
//! Without amtool (Debian: `apt-get install prometheus-alertmanager`) or the Alertmanager binary
//! the tool-based tests say loudly that they were skipped; on CI (`CI` set) they fail instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, shell_blocks, workspace_root};
use serde_json::{json, Value};

const RULES: &str = "deploy/prometheus/kokino-alerts.yml";
const CONFIG: &str = "deploy/alertmanager/alertmanager.yml";
const ROUTING_DOCS: [&str; 2] = ["docs/ops/ALERT-PLAYBOOKS.md", "docs/ops/README.md"];
/// Blocks of the routing docs carry this in their `<!-- doc-test: skip ... -->` marker: the
/// broker runbook test skips them (they need Alertmanager's tools, not a broker) and this file
/// runs them.
const DOC_MARKER: &str = "alert_routing.rs";

/// The escalation table of the operations guide: team label → (the channel's receiver, the
/// `escalation` label the team's alerts must carry, which is also the lead's receiver).
const ESCALATION: [(&str, &str, &str); 4] = [
    ("backend", "headless-alerts", "platform-lead"),
    ("qa", "shadow-mode-alerts", "qa-lead"),
    ("data", "critical-alerts", "data-lead"),
    ("ops", "ops-alerts", "ops-lead"),
];

/// One alert rule of the rules file with the labels its alerts carry: `alertname`, the static
/// labels of the rule and the ones its expression keeps (see [`expression_labels`]).
#[derive(Debug, Clone)]
struct AlertRule {
    name: String,
    labels: BTreeMap<String, String>,
    body: String,
}

impl AlertRule {
    fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }

    /// `name{k="v",...}`: how failures name the rule (an alert name can have several rules).
    fn describe(&self) -> String {
        let l: Vec<String> = self
            .labels
            .iter()
            .filter(|(k, _)| *k != "alertname")
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}{{{}}}", self.name, l.join(","))
    }

    /// The labels as amtool arguments, `key=value`.
    fn amtool_args(&self) -> Vec<String> {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

/// The alert rules of a rules file, read line by line: the file is ours and regular (`- alert:`
/// starts a rule, `labels:` opens a block of `key: value` lines indented deeper than it).
fn alert_rules(text: &str) -> Vec<AlertRule> {
    let mut out: Vec<AlertRule> = Vec::new();
    let mut labels_indent: Option<usize> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if let Some(li) = labels_indent {
            if indent > li {
                if let (Some((k, v)), Some(rule)) = (t.split_once(':'), out.last_mut()) {
                    let v = v.trim().trim_matches('"').trim_matches('\'');
                    rule.labels.insert(k.trim().to_owned(), v.to_owned());
                }
                continue;
            }
            labels_indent = None;
        }
        if let Some(name) = t.strip_prefix("- alert:") {
            let name = name.trim().to_owned();
            let mut labels = BTreeMap::new();
            labels.insert("alertname".to_owned(), name.clone());
            out.push(AlertRule {
                name,
                labels,
                body: String::new(),
            });
        } else if t.starts_with("- record:") || t.starts_with("- name:") {
            // A recording rule or a new group: labels that follow are not an alert's.
            out.push(AlertRule {
                name: String::new(),
                labels: BTreeMap::new(),
                body: String::new(),
            });
        } else if t == "labels:" {
            labels_indent = Some(indent);
        } else if let Some(rule) = out.last_mut() {
            rule.body.push_str(t);
            rule.body.push('\n');
        }
    }
    out.retain(|r| !r.name.is_empty());
    for r in &mut out {
        for (k, v) in expression_labels(&r.body) {
            r.labels.entry(k).or_insert(v);
        }
    }
    out
}

/// The labels an alert's expression keeps: each `by (...)` label, valued as the expression's
/// own matcher on it (`scope="cli"`) or, without one, as a plausible value (`cli` →
/// `claude-code`). The breaker alerts differ only by such a label (`scope`), so inhibitions
/// must be checked with it.
fn expression_labels(body: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = body;
    while let Some(pos) = rest.find(" by (") {
        rest = &rest[pos + " by (".len()..];
        let end = rest.find(')').unwrap_or(rest.len());
        for label in rest[..end].split(',').map(str::trim).filter(|l| *l != "le") {
            let matcher = format!("{label}=\"");
            let value = body
                .find(&matcher)
                .map(|i| {
                    let v = &body[i + matcher.len()..];
                    v[..v.find('"').unwrap_or(v.len())].to_owned()
                })
                .unwrap_or_else(|| match label {
                    "cli" => "claude-code".to_owned(),
                    other => format!("some-{other}"),
                });
            out.insert(label.to_owned(), value);
        }
    }
    out
}

/// What the escalation table says a rule must reach: its channel and its lead. Errors name the
/// rule and what is missing or inconsistent, so a rule added without routing labels fails here.
fn expected_receivers(rule: &AlertRule) -> Result<(&'static str, &'static str), String> {
    let severity = rule.label("severity");
    if !["page", "ticket"].contains(&severity) {
        return Err(format!(
            "{}: severity must be page or ticket",
            rule.describe()
        ));
    }
    let team = rule.label("team");
    let Some((_, channel, lead)) = ESCALATION.iter().find(|(t, _, _)| *t == team) else {
        return Err(format!(
            "{}: no `team` label of the escalation table ({:?})",
            rule.describe(),
            ESCALATION.map(|e| e.0)
        ));
    };
    if rule.label("escalation") != *lead {
        return Err(format!(
            "{}: team {team} escalates to {lead}; the rule says escalation={:?}",
            rule.describe(),
            rule.label("escalation")
        ));
    }
    Ok((channel, lead))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel))
        .unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ------------------------------------------------------------------------------- tools

/// A tool from `env_var` or `PATH` (first of `names`), or a loud note that `what` was not
/// checked; on CI a missing tool fails the test.
fn tool_or_skip(env_var: &str, names: &[&str], what: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let note = format!(
        "\n\
         ************************************************************************\n\
         *  {} NOT FOUND: {what} NOT checked.\n\
         *  Install it (Debian: apt-get install prometheus-alertmanager, which\n\
         *  ships /usr/bin/amtool and /usr/bin/prometheus-alertmanager) or point\n\
         *  {env_var} at the binary.\n\
         ************************************************************************\n",
        names[0]
    );
    // Straight to stderr, not through the test harness's capture: a skip must be seen.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{} is required on CI (.ci/run installs it){note}", names[0]);
    }
    None
}

fn amtool_or_skip(what: &str) -> Option<PathBuf> {
    tool_or_skip("AMTOOL", &["amtool"], what)
}

/// Runs amtool in the repository root; returns (success, stdout, stderr).
fn amtool(bin: &Path, args: &[String]) -> (bool, String, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The receivers `amtool config routes test` resolves for `labels`, and its `--tree` text.
fn routes_test(bin: &Path, labels: &[String]) -> (BTreeSet<String>, String) {
    let mut args = vec![
        "config".to_owned(),
        "routes".to_owned(),
        "test".to_owned(),
        format!("--config.file={CONFIG}"),
        "--tree".to_owned(),
    ];
    args.extend(labels.iter().cloned());
    let (ok, out, err) = amtool(bin, &args);
    assert!(ok, "amtool {args:?} failed:\n{out}\n{err}");
    // The last non-empty line is the comma-separated receiver list; the tree comes before it.
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let receivers = last.split(',').map(|s| s.trim().to_owned()).collect();
    (receivers, out)
}

// ------------------------------------------------------------------------------- label checks

#[test]
fn every_alert_rule_carries_the_routing_labels_of_the_escalation_table() {
    let rules = alert_rules(&read(RULES));
    let names: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.len() >= 9 && rules.len() >= 11,
        "the rules file parsed into too few alerts: {names:?}"
    );
    let problems: Vec<String> = rules
        .iter()
        .filter_map(|r| expected_receivers(r).err())
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every team of the table owns at least one alert: a channel nobody routes to is a typo.
    for (team, _, _) in ESCALATION {
        assert!(
            rules.iter().any(|r| r.label("team") == team),
            "no alert routes to team {team}"
        );
    }
}

/// The checker itself: a rule added without routing labels, with a team outside the table, or
/// with the wrong lead is refused (the real rules file passes, see above).
#[test]
fn a_rule_without_routing_labels_is_refused() {
    let text = "\
groups:
  - name: g
    rules:
      - record: kokino:x
        expr: vector(1)
        labels:
          team: backend
      - alert: Routed
        expr: vector(1)
        for: 1m
        labels:
          severity: page
          team: data
          escalation: data-lead
        annotations:
          summary: s
      - alert: NoLabels
        expr: vector(1)
        labels:
          severity: ticket
        annotations:
          summary: s
      - alert: UnknownTeam
        expr: vector(1)
        labels:
          severity: ticket
          team: marketing
          escalation: ops-lead
      - alert: WrongLead
        expr: vector(1)
        labels:
          severity: page
          team: qa
          escalation: ops-lead
";
    let rules = alert_rules(text);
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["Routed", "NoLabels", "UnknownTeam", "WrongLead"]);
    assert_eq!(rules[0].label("team"), "data");
    assert_eq!(
        expected_receivers(&rules[0]),
        Ok(("critical-alerts", "data-lead"))
    );
    for r in &rules[1..] {
        let err = expected_receivers(r).expect_err(&r.name);
        assert!(err.starts_with(&r.name), "{err}");
    }
    assert!(expected_receivers(&rules[1]).unwrap_err().contains("team"));
    assert_eq!(
        expression_labels("expr: sum by (scope) (x{scope=\"cli\", state=~\"open\"}) > 0\n"),
        BTreeMap::from([("scope".to_owned(), "cli".to_owned())])
    );
    assert_eq!(
        expression_labels(
            "expr: max by (cli) (y) == 1\nhistogram_quantile(0.95, sum by (le) (z))\n"
        ),
        BTreeMap::from([("cli".to_owned(), "claude-code".to_owned())])
    );
    assert!(expected_receivers(&rules[3])
        .unwrap_err()
        .contains("escalates to qa-lead"));
}

// ------------------------------------------------------------------------------- amtool

#[test]
fn alertmanager_config_passes_amtool_check_config() {
    let Some(bin) = amtool_or_skip("the Alertmanager configuration was") else {
        return;
    };
    let (ok, out, err) = amtool(&bin, &["check-config".to_owned(), CONFIG.to_owned()]);
    assert!(ok, "amtool check-config {CONFIG}:\n{out}\n{err}");
    assert!(out.contains("SUCCESS"), "{out}");
    let config = read(CONFIG);
    assert!(
        !config.contains("hooks.slack.com") && !config.contains("api_url:"),
        "{CONFIG} must read webhook URLs from files (api_url_file), never hold one"
    );
    for (_, channel, lead) in ESCALATION {
        assert!(
            config.contains(&format!("- name: {channel}\n")),
            "receiver {channel}"
        );
        assert!(
            config.contains(&format!("- name: {lead}\n")),
            "receiver {lead}"
        );
        assert!(
            config.contains(&format!("channel: '#{channel}'")),
            "receiver {channel} posts to #{channel}"
        );
    }
}

/// Each rule of the rules file, with its real labels, lands on its team's channel and its
/// lead, on the route of its severity; an alert without a team lands on `unrouted` only.
#[test]
fn every_alert_of_the_rules_file_routes_to_its_channel_and_lead() {
    let Some(bin) = amtool_or_skip("the alert routes were") else {
        return;
    };
    let rules = alert_rules(&read(RULES));
    assert!(rules.len() >= 11, "{rules:?}");
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for rule in &rules {
        let (channel, lead) = match expected_receivers(rule) {
            Ok(r) => r,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let (got, tree) = routes_test(&bin, &rule.amtool_args());
        let want: BTreeSet<String> = [channel.to_owned(), lead.to_owned()].into();
        if got != want {
            failures.push(format!(
                "{} reaches {got:?}, the escalation table says {want:?}\n{tree}",
                rule.describe()
            ));
        }
        // Pages and tickets take their own routes (timing and escalation delay differ): the
        // matched leaves are the severity's, under the team and under the lead.
        let severity_leaves = tree
            .matches(&format!("{{severity=\"{}\"}}", rule.label("severity")))
            .count();
        if severity_leaves != 2 {
            failures.push(format!(
                "{}: expected the {} leaf under the team and under the lead:\n{tree}",
                rule.describe(),
                rule.label("severity")
            ));
        }
        table.push(format!(
            "{:<60} -> {channel}, escalates to {lead}",
            rule.describe()
        ));
    }
    eprintln!("alert routes:\n  {}", table.join("\n  "));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // Without routing labels an alert reaches only the catch-all, which says so in its title.
    let (got, _) = routes_test(
        &bin,
        &[
            "alertname=KokinoSomethingNew".to_owned(),
            "severity=page".to_owned(),
        ],
    );
    assert_eq!(got, BTreeSet::from(["unrouted".to_owned()]));
}

// ------------------------------------------------------------------------------- Alertmanager

/// A real Alertmanager on a free port, stopped (by its pid) when dropped.
struct Alertmanager {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    /// Starts `bin` on `config` (gossip off, storage in a temp directory) and waits until ready.
    fn start(bin: &Path, config: &Path) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let am = Alertmanager {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http::blocking_get(&format!("{}/-/ready", am.base)) {
                if r == 200 {
                    return am;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Alertmanager did not become ready:\n{}",
                std::fs::read_to_string(am._dir.path().join("alertmanager.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Tiny blocking HTTP helpers over reqwest's async client (the tests here are synchronous).
mod http {
    use reqwest::{Client, Method, Result};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// The status of a GET, or an error when nothing answers.
    pub fn blocking_get(url: &str) -> Result<u16> {
        rt().block_on(async { Ok(Client::new().get(url).send().await?.status().as_u16()) })
    }

    pub fn blocking_json(
        method: Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        rt().block_on(async {
            let mut req = Client::new().request(method, url);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let r = req.send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert!(status.is_success(), "{url}: {status} {text}");
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
        })
    }
}

fn alertmanager_or_skip(what: &str) -> Option<PathBuf> {
    tool_or_skip(
        "ALERTMANAGER",
        &["prometheus-alertmanager", "alertmanager"],
        what,
    )
}

/// The repository's configuration with its secrets directory moved to `dir/secrets` (holding
/// placeholder webhook files), written to `dir/alertmanager.yml`.
fn installed_config(dir: &Path) -> PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for (_, channel, _) in ESCALATION {
        std::fs::write(
            secrets.join(format!("slack-{channel}.url")),
            "http://127.0.0.1:9/placeholder\n",
        )
        .unwrap();
    }
    let config = read(CONFIG).replace("/etc/alertmanager", &dir.display().to_string());
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, config).unwrap();
    path
}

/// The rule of the rules file named `name` whose labels include `extra` (e.g. a scope).
fn rule<'a>(rules: &'a [AlertRule], name: &str, extra: &[(&str, &str)]) -> &'a AlertRule {
    rules
        .iter()
        .find(|r| r.name == name && extra.iter().all(|(k, v)| r.label(k) == *v))
        .unwrap_or_else(|| panic!("no rule {name} {extra:?} in {RULES}"))
}

/// Posts alerts with exactly the labels of the given rules (plus `extra` labels).
fn post(am: &Alertmanager, rules: &[&AlertRule]) {
    let alerts: Vec<Value> = rules
        .iter()
        .map(|r| json!({"labels": r.labels, "annotations": {"summary": "alert_routing.rs"}}))
        .collect();
    http::blocking_json(
        reqwest::Method::POST,
        &format!("{}/api/v2/alerts", am.base),
        Some(Value::Array(alerts)),
    );
}

/// An alert as Alertmanager holds it.
#[derive(Debug)]
struct AlertState {
    labels: BTreeMap<String, String>,
    /// `active` or `suppressed`.
    state: String,
    /// `alertname/scope-or-severity` of the alerts inhibiting it.
    inhibited_by: Vec<String>,
    receivers: Vec<String>,
}

/// The alerts Alertmanager holds.
fn alert_states(am: &Alertmanager) -> Vec<AlertState> {
    let all = http::blocking_json(
        reqwest::Method::GET,
        &format!("{}/api/v2/alerts", am.base),
        None,
    );
    let by_fp: BTreeMap<String, String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["fingerprint"].as_str().unwrap().to_owned(),
                format!(
                    "{}/{}",
                    a["labels"]["alertname"].as_str().unwrap_or(""),
                    a["labels"]["scope"]
                        .as_str()
                        .or(a["labels"]["severity"].as_str())
                        .unwrap_or("")
                ),
            )
        })
        .collect();
    all.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(a["labels"].clone()).unwrap();
            let inhibited_by = a["status"]["inhibitedBy"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|fp| by_fp.get(fp.as_str().unwrap()).cloned().unwrap_or_default())
                .collect();
            let receivers = a["receivers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| r["name"].as_str().unwrap_or("").to_owned())
                .collect();
            AlertState {
                labels,
                state: a["status"]["state"].as_str().unwrap_or("").to_owned(),
                inhibited_by,
                receivers,
            }
        })
        .collect()
}

/// Polls until the alert with `labels` is in `state` and inhibited by `by` (nothing when `by`
/// is empty; otherwise some of `by` and nothing else: Alertmanager names the source of the
/// first inhibit rule that mutes an alert, not every one).
fn wait_for(am: &Alertmanager, r: &AlertRule, state: &str, by: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let want: BTreeSet<String> = by.iter().map(|s| s.to_string()).collect();
    loop {
        let states = alert_states(am);
        if let Some(found) = states.iter().find(|a| a.labels == r.labels) {
            let got: BTreeSet<String> = found.inhibited_by.iter().cloned().collect();
            let by_ok = if want.is_empty() {
                got.is_empty()
            } else {
                !got.is_empty() && got.is_subset(&want)
            };
            if found.state == state && by_ok {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} should be {state} inhibited by {want:?}; Alertmanager holds {states:#?}",
            r.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The inhibitions, on a real Alertmanager with alerts carrying exactly the labels of the
/// rules: without their sources the targets are active and routed as the table says; an open
/// CLI breaker suppresses the agent-breaker alert, a store outage the SLO alerts (not the
/// others), a paging burn rate the 1x ticket.
#[test]
fn inhibitions_hold_with_the_labels_the_rules_carry() {
    let Some(bin) = alertmanager_or_skip("the inhibitions were") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let am = Alertmanager::start(&bin, &installed_config(dir.path()));
    let rules = alert_rules(&read(RULES));
    let agent_breaker = rule(&rules, "KokinoCircuitBreakerOpened", &[("scope", "agent")]);
    let cli_breaker = rule(&rules, "KokinoCircuitBreakerOpened", &[("scope", "cli")]);
    let burn_ticket = rule(
        &rules,
        "KokinoAvailabilityErrorBudgetBurn",
        &[("severity", "ticket")],
    );
    let burn_page = rule(
        &rules,
        "KokinoAvailabilityErrorBudgetBurn",
        &[("long_window", "1h")],
    );
    let latency = rule(&rules, "KokinoLatencySLOBreach", &[]);
    let store = rule(&rules, "KokinoStoreUnavailable", &[]);
    let environment = rule(&rules, "KokinoEnvironmentDegraded", &[]);

    // The targets alone: nothing inhibits them, and the real routing tree sends them where
    // the escalation table says.
    post(&am, &[agent_breaker, burn_ticket, latency, environment]);
    for r in [agent_breaker, burn_ticket, latency, environment] {
        wait_for(&am, r, "active", &[]);
        let (channel, lead) = expected_receivers(r).unwrap();
        let states = alert_states(&am);
        let found = states.iter().find(|a| a.labels == r.labels).unwrap();
        let got: BTreeSet<&str> = found.receivers.iter().map(String::as_str).collect();
        assert_eq!(got, BTreeSet::from([channel, lead]), "{}", r.describe());
    }

    // An open CLI breaker silences the agent breakers, nothing else.
    post(&am, &[cli_breaker]);
    wait_for(
        &am,
        agent_breaker,
        "suppressed",
        &["KokinoCircuitBreakerOpened/cli"],
    );
    wait_for(&am, burn_ticket, "active", &[]);

    // A paging burn rate makes the 1x ticket redundant.
    post(&am, &[burn_page]);
    wait_for(
        &am,
        burn_ticket,
        "suppressed",
        &["KokinoAvailabilityErrorBudgetBurn/page"],
    );

    // A store outage suppresses the SLO alerts it causes (the page included), not the
    // environment alert or the store alert itself.
    post(&am, &[store]);
    wait_for(
        &am,
        burn_page,
        "suppressed",
        &["KokinoStoreUnavailable/page"],
    );
    wait_for(&am, latency, "suppressed", &["KokinoStoreUnavailable/page"]);
    wait_for(
        &am,
        burn_ticket,
        "suppressed",
        &[
            "KokinoAvailabilityErrorBudgetBurn/page",
            "KokinoStoreUnavailable/page",
        ],
    );
    wait_for(&am, environment, "active", &[]);
    wait_for(&am, store, "active", &[]);
    wait_for(&am, cli_breaker, "active", &[]);
}

// ------------------------------------------------------------------------------- the docs

/// The routing commands of the operator docs (install, fill in the channels, check, test a
/// route, send a test alert) run as written from the repository root, with `AM_DIR` pointing at
/// a temporary directory instead of /etc/alertmanager and `localhost:9093` at a real
/// Alertmanager started on the installed configuration.
#[test]
fn routing_commands_of_the_docs_work_as_written() {
    let Some(amtool_bin) = amtool_or_skip("the documented routing commands were") else {
        return;
    };
    let Some(am_bin) = alertmanager_or_skip("the documented routing commands were") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let am_dir = dir.path().join("etc-alertmanager");
    let path = format!(
        "{}:{}",
        amtool_bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut am: Option<Alertmanager> = None;
    let mut ran = Vec::new();
    for doc in ROUTING_DOCS {
        let blocks: Vec<String> = shell_blocks(&read(doc))
            .into_iter()
            .filter(|(m, _)| m.as_deref().is_some_and(|m| m.contains(DOC_MARKER)))
            .map(|(_, b)| b)
            .collect();
        assert!(
            !blocks.is_empty(),
            "{doc} has no routing blocks marked {DOC_MARKER}"
        );
        for body in blocks {
            let mut script = String::from("set -euo pipefail\n");
            if body.contains("localhost:9093") {
                // The documented Alertmanager: started on what the install block installed.
                let am = am.get_or_insert_with(|| {
                    Alertmanager::start(&am_bin, &am_dir.join("alertmanager.yml"))
                });
                let addr = am.base.trim_start_matches("http://").to_owned();
                script.push_str(&body.replace("localhost:9093", &addr));
            } else {
                script.push_str(&body);
            }
            let out = Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(workspace_root())
                .env("PATH", &path)
                .env("AM_DIR", &am_dir)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{doc}: this block failed:\n{body}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            );
            ran.push((doc, body, stdout));
        }
    }
    let all: String = ran.iter().map(|(_, b, _)| b.as_str()).collect();
    for needed in [
        "amtool check-config",
        "amtool config routes test",
        "--verify.receivers",
        "amtool alert add",
        "/-/reload",
    ] {
        assert!(all.contains(needed), "the routing docs do not run {needed}");
    }
    // The install block installed the configuration and one webhook file per channel, private.
    let installed = std::fs::read_to_string(am_dir.join("alertmanager.yml")).unwrap();
    assert!(installed.contains(&am_dir.join("secrets").display().to_string()));
    for (_, channel, _) in ESCALATION {
        let f = am_dir.join("secrets").join(format!("slack-{channel}.url"));
        let meta = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            meta.permissions().mode() & 0o077,
            0,
            "{} is private",
            f.display()
        );
    }
    // The documented test alert reached the running Alertmanager and was routed to ops.
    let am = am.expect("a block talks to the running Alertmanager");
    let states = alert_states(&am);
    let test_alert = states
        .iter()
        .find(|a| {
            a.labels
                .get("alertname")
                .is_some_and(|n| n == "KokinoRoutingTest")
        })
        .unwrap_or_else(|| panic!("the documented test alert is not in Alertmanager: {states:#?}"));
    let got: BTreeSet<&str> = test_alert.receivers.iter().map(String::as_str).collect();
    assert_eq!(got, BTreeSet::from(["ops-alerts", "ops-lead"]));
}
