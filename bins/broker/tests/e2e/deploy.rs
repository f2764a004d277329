//! The monitoring artefacts under `deploy/` (Grafana dashboards, Prometheus rules and their
//! promtool tests) checked against promtool and against what a real broker exports: a dashboard
//! panel or an alert on a metric name the broker does not serve would stay silent forever.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use serde_json::{json, Value};

/// Metric names the dashboards and rules use that the broker does not export yet because they
/// are being added right now. Remove an entry when its metric lands (the test says when).
const PENDING: &[(&str, &str)] = &[];

/// Metrics the broker declares (`kokino_service::telemetry::METRICS`) but that this test does
/// not provoke, with the reason. The exporter only renders a metric once it has a value, so
/// these are checked against the declaration instead of `/metrics`.
const NOT_PROVOKED: &[(&str, &str)] = &[
    (
        "kokino_events_dropped_total",
        "counts only when the event writer's 10 000-event queue overflows",
    ),
    (
        "kokino_shadow_similarity_ratio",
        "a histogram gets its first sample from a shadow run with two answers (tmux needed)",
    ),
    (
        "kokino_shadow_latency_delta_seconds",
        "a histogram gets its first sample from a shadow run with two answers (tmux needed)",
    ),
    (
        "kokino_env_check_failing",
        "set by the doctor's first run, which runs in the background at start",
    ),
];

/// The playbook anchors the alerts' `runbook_url`s must point at, one per alert.
const PLAYBOOK_ANCHORS: [&str; 9] = [
    "availability-slo-burn",
    "latency-slo",
    "correctness-shadow-mismatch",
    "data-integrity",
    "resource-usage",
    "environment-degraded",
    "circuit-breaker-opened",
    "lock-timeouts",
    "store-unavailable",
];

const RULES: &str = "deploy/prometheus/kokino-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/kokino-alerts.test.yml";
const PLAYBOOKS: &str = "docs/ops/ALERT-PLAYBOOKS.md";

fn root() -> PathBuf {
    workspace_root()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = root().join("deploy/grafana");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            out.push((name, v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every PromQL string of a dashboard: panel targets and templating queries.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains("kokino") => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// A rule of the rules file, read line by line (the file is ours and regular: `- alert:` or
/// `- record:` starts a rule, and everything up to the next one belongs to it).
#[derive(Debug, Default)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    body: String,
}

fn rules(text: &str) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        if let Some(name) = t.strip_prefix("- alert:") {
            out.push(Rule {
                alert: Some(name.trim().to_owned()),
                ..Rule::default()
            });
        } else if let Some(name) = t.strip_prefix("- record:") {
            out.push(Rule {
                record: Some(name.trim().to_owned()),
                ..Rule::default()
            });
        } else if t.starts_with("- name:") {
            // A new group: what follows is not part of the previous rule.
            out.push(Rule::default());
        } else if let Some(r) = out.last_mut() {
            r.body.push_str(line);
            r.body.push('\n');
        }
    }
    out.retain(|r| r.alert.is_some() || r.record.is_some());
    out
}

/// `kokino_*` metric names in a PromQL text (recording rules, `kokino:...`, are not metrics).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("kokino_") {
        let start = i + pos;
        let prev_ok = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let mut end = start + "kokino_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if prev_ok && end > start + "kokino_".len() {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// `kokino:...` recording-rule names used in a PromQL text.
fn recording_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("kokino:") {
        let start = i + pos;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(text.len(), |e| start + e);
        out.insert(text[start..end].to_owned());
        i = end;
    }
    out
}

/// The names in a Prometheus text exposition, with their `# TYPE` where given.
fn exported(metrics: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        if let Some(rest) = line
            .strip_prefix("# TYPE ")
            .or_else(|| line.strip_prefix("# HELP "))
        {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or_default().to_owned();
            let kind = if line.starts_with("# TYPE ") {
                parts.next().unwrap_or_default().to_owned()
            } else {
                String::new()
            };
            let entry = out.entry(name).or_insert_with(String::new);
            if !kind.is_empty() {
                *entry = kind;
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.entry(name).or_insert_with(String::new);
        }
    }
    out
}

/// Is `name` (possibly `<histogram>_bucket|_sum|_count`) among `known` (name → type)?
fn covered(name: &str, known: &BTreeMap<String, String>) -> bool {
    if known.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| known.get(base))
            .is_some_and(|kind| kind == "histogram")
    })
}

// ------------------------------------------------------------------------------- promtool

fn find_promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMTOOL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

/// promtool, or `None` after a loud note; on CI (`CI` set) a missing promtool fails the test,
/// because `.ci/run` installs it.
fn promtool_or_skip(what: &str) -> Option<PathBuf> {
    if let Some(p) = find_promtool() {
        return Some(p);
    }
    let note = format!(
        "\n\
         ************************************************************************\n\
         *  promtool NOT FOUND: {what} NOT checked.\n\
         *  Install it (Debian: apt-get install prometheus, which ships\n\
         *  /usr/bin/promtool) or point PROMTOOL at the binary.\n\
         ************************************************************************\n"
    );
    // Straight to stderr, not through the test harness's capture: a skip must be seen.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("promtool is required on CI (.ci/run installs it){note}");
    }
    None
}

fn run_promtool(promtool: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool {} failed:\n{stdout}\n{stderr}",
        args.join(" ")
    );
    eprintln!("promtool {}:\n{stdout}", args.join(" "));
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = promtool_or_skip("the Prometheus rules and their unit tests were") else {
        return;
    };
    run_promtool(&promtool, &["check", "rules", RULES]);
    run_promtool(&promtool, &["test", "rules", RULE_TESTS]);
}

/// Every dashboard query parses as PromQL: each becomes a recording rule in a scratch file that
/// `promtool check rules` parses (Grafana's variables replaced by plausible values).
#[test]
fn dashboard_queries_parse_as_promql() {
    let Some(promtool) = promtool_or_skip("the dashboards' PromQL was") else {
        return;
    };
    let mut yaml = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for (name, d) in dashboards() {
        let mut exprs = Vec::new();
        dashboard_exprs(&d, &mut exprs);
        for e in exprs {
            if e.starts_with("label_values(") {
                continue;
            }
            n += 1;
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$__range", "1h")
                .replace("$__interval", "1m")
                .replace("$cli", ".*");
            yaml.push_str(&format!(
                "      # {name}\n      - record: dashboard:expr{n}\n        expr: {}\n",
                Value::String(e)
            ));
        }
    }
    assert!(n > 20, "only {n} dashboard queries found");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboards.rules.yml");
    std::fs::write(&file, yaml).unwrap();
    run_promtool(&promtool, &["check", "rules", file.to_str().unwrap()]);
}

// ------------------------------------------------------------------------------- structure

#[test]
fn dashboards_are_importable() {
    let dashboards = dashboards();
    assert!(dashboards.len() >= 4, "four dashboards expected");
    let titles: Vec<&str> = dashboards
        .iter()
        .map(|(_, d)| d["title"].as_str().unwrap_or(""))
        .collect();
    for want in [
        "Headless Execution Overview",
        "Shadow Mode Validation",
        "Resource Usage",
        "Circuit Breaker Status",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no dashboard titled {want:?}: {titles:?}"
        );
    }
    let recorded: BTreeSet<String> = rules(&read(RULES))
        .into_iter()
        .filter_map(|r| r.record)
        .collect();
    let mut uids = BTreeSet::new();
    for (name, d) in &dashboards {
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(!uid.is_empty() && uid.len() <= 40, "{name}: uid {uid:?}");
        assert!(uids.insert(uid.to_owned()), "{name}: uid {uid} used twice");
        assert!(
            d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
            "{name}: schemaVersion"
        );
        assert!(d["id"].is_null(), "{name}: id must be null to import");
        let inputs = d["__inputs"].as_array().cloned().unwrap_or_default();
        assert!(
            inputs
                .iter()
                .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
            "{name}: no DS_PROMETHEUS datasource input"
        );
        let panels = d["panels"].as_array().cloned().unwrap_or_default();
        let real: Vec<&Value> = panels.iter().filter(|p| p["type"] != "row").collect();
        assert!(real.len() >= 4, "{name}: too few panels");
        let mut ids = BTreeSet::new();
        for p in &panels {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{name}: a panel without a title");
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: duplicate panel id"
            );
            let g = &p["gridPos"];
            assert!(
                g["w"].as_u64().is_some_and(|w| w >= 1)
                    && g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
                "{name}/{title}: gridPos {g}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{name}/{title}: datasource"
            );
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{name}/{title}: no query");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(expr.contains("kokino"), "{name}/{title}: query {expr:?}");
                for r in recording_names(expr) {
                    assert!(
                        recorded.contains(&r),
                        "{name}/{title}: uses {r}, which {RULES} does not record"
                    );
                }
            }
        }
    }
}

#[test]
fn every_alert_is_labelled_annotated_and_linked_to_its_playbook() {
    let text = read(RULES);
    let all = rules(&text);
    let recorded: BTreeSet<String> = all.iter().filter_map(|r| r.record.clone()).collect();
    let mut names = BTreeSet::new();
    let mut anchors = BTreeSet::new();
    for r in all.iter().filter(|r| r.alert.is_some()) {
        let name = r.alert.as_deref().unwrap();
        names.insert(name.to_owned());
        for key in ["severity:", "summary:", "description:", "runbook_url:"] {
            assert!(
                r.body.contains(key),
                "alert {name} has no {key}\n{}",
                r.body
            );
        }
        let severity = r
            .body
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .unwrap()
            .trim();
        assert!(
            ["page", "ticket"].contains(&severity),
            "alert {name}: severity {severity}"
        );
        let url = r
            .body
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url:"))
            .unwrap()
            .trim();
        let anchor = url
            .strip_prefix(&format!("{PLAYBOOKS}#"))
            .unwrap_or_else(|| panic!("alert {name}: runbook_url {url} is not {PLAYBOOKS}#..."));
        assert!(
            PLAYBOOK_ANCHORS.contains(&anchor),
            "alert {name}: unknown playbook anchor {anchor}"
        );
        anchors.insert(anchor.to_owned());
        for used in recording_names(&r.body) {
            assert!(
                recorded.contains(&used),
                "alert {name} uses unrecorded {used}"
            );
        }
    }
    assert_eq!(
        names.len(),
        9,
        "the nine alerts of the playbooks: {names:?}"
    );
    assert_eq!(
        anchors,
        PLAYBOOK_ANCHORS.iter().map(|s| s.to_string()).collect(),
        "one alert per playbook"
    );
    // The burn-rate alert in its multi-window form: 14.4x and 6x pages, a 1x ticket.
    for needle in [
        "kokino:execution_errors:ratio_rate1h > (14.4 * 0.005)",
        "kokino:execution_errors:ratio_rate5m > (14.4 * 0.005)",
        "kokino:execution_errors:ratio_rate6h > (6 * 0.005)",
        "kokino:execution_errors:ratio_rate30m > (6 * 0.005)",
        "kokino:execution_errors:ratio_rate3d > (1 * 0.005)",
        "kokino:execution_errors:ratio_rate6h > (1 * 0.005)",
    ] {
        assert!(text.contains(needle), "{RULES} lacks {needle}");
    }

    // When the playbooks exist, every anchor must be one of their headings (GitHub's slugs).
    match std::fs::read_to_string(root().join(PLAYBOOKS)) {
        Ok(md) => {
            let slugs: BTreeSet<String> = md
                .lines()
                .filter(|l| l.starts_with('#'))
                .map(|l| slug(l.trim_start_matches('#')))
                .collect();
            for a in PLAYBOOK_ANCHORS {
                assert!(
                    slugs.contains(a),
                    "{PLAYBOOKS} has no heading for #{a}: {slugs:?}"
                );
            }
        }
        Err(_) => eprintln!("note: {PLAYBOOKS} does not exist yet; runbook anchors not checked"),
    }
}

/// GitHub's heading anchor: lower case, spaces to hyphens, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------------------- live broker

/// Drives a real broker through the paths that create labelled series: success, CLI failure,
/// malformed output, a lock timeout, a rate limit, a breaker opening and refusing, an integrity
/// check. Returns its `/metrics` text.
async fn busy_broker_metrics() -> String {
    let w = World::new();
    // No tmux on PATH: an opened agent breaker refuses instead of rerouting to tmux.
    let b = w.start_with(
        &[],
        &[("PATH", &w.path().join("bin").display().to_string())],
    );
    w.register(&b, "ok", "claude-code", json!({})).await;
    w.register(&b, "quota", "gemini", json!({})).await;
    w.register(&b, "flaky", "codex", json!({})).await;

    let (s, body) = b.execute("ok", "hello").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = b.execute("ok", "fake:exit=3").await;
    assert_eq!(s, 502, "{body}");
    let (s, body) = b.execute("ok", "fake:malformed still answers").await;
    assert!(s == 200 || s == 502, "{s} {body}");

    // A slow run holds the lock (and is sampled for memory); an impatient request times out.
    let slow = {
        let client = b.client.clone();
        let url = format!("{}/agents/ok/execute", b.base);
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"prompt": "fake:mem=32MB fake:sleep=1.5 slow"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let before = w.witness_lines().len();
    assert!(
        eventually(std::time::Duration::from_secs(5), || w
            .witness_lines()
            .len()
            > before)
        .await
    );
    let (s, body) = b
        .post(
            "/agents/ok/execute",
            json!({"prompt": "impatient", "lockTimeoutMs": 100}),
        )
        .await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(slow.await.unwrap(), 200);

    // A rate limit parks the agent; the next request is refused without running.
    assert_eq!(b.execute("quota", "fake:ratelimit").await.0, 503);
    let (s, body) = b.execute("quota", "again").await;
    assert_eq!(
        (s, body["code"].as_str()),
        (503, Some("RATE_LIMITED")),
        "{body}"
    );

    // Five failures open the agent's breaker; the sixth request is refused.
    for _ in 0..5 {
        assert_eq!(b.execute("flaky", "fake:exit=1").await.0, 502);
    }
    let (s, body) = b.execute("flaky", "refused").await;
    assert_eq!(
        (s, body["code"].as_str()),
        (503, Some("CIRCUIT_OPEN")),
        "{body}"
    );

    let (s, body) = b.get("/api/integrity/check").await;
    assert!(s == 200 || s == 503, "{s} {body}");

    let (s, text) = b.get_text("/metrics").await;
    assert_eq!(s, 200);
    text
}

#[tokio::test]
async fn every_metric_the_dashboards_and_rules_use_is_exported_by_the_broker() {
    // Where each name is used.
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, d) in dashboards() {
        let mut exprs = Vec::new();
        dashboard_exprs(&d, &mut exprs);
        for e in exprs {
            for m in metric_names(&e) {
                used.entry(m)
                    .or_default()
                    .insert(format!("deploy/grafana/{name}"));
            }
        }
    }
    for r in rules(&read(RULES)) {
        let what = match (&r.alert, &r.record) {
            (Some(a), _) => format!("alert {a}"),
            (_, Some(rec)) => format!("rule {rec}"),
            _ => continue,
        };
        for m in metric_names(&r.body) {
            used.entry(m).or_default().insert(what.clone());
        }
    }
    assert!(
        used.len() >= 15,
        "suspiciously few metric names found: {used:?}"
    );

    let text = busy_broker_metrics().await;
    let live = exported(&text);

    let declared: BTreeMap<String, String> = kokino_service::telemetry::METRICS
        .iter()
        .map(|m| (m.name.to_owned(), m.kind.to_owned()))
        .collect();
    let mut allowed: BTreeMap<String, String> = BTreeMap::new();
    for (name, reason) in NOT_PROVOKED {
        let kind = declared
            .get(*name)
            .unwrap_or_else(|| panic!("NOT_PROVOKED {name} ({reason}) is not declared in METRICS"));
        allowed.insert(name.to_string(), kind.clone());
    }
    let pending: BTreeMap<String, String> = PENDING
        .iter()
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect();

    let mut missing = Vec::new();
    for (name, places) in &used {
        if covered(name, &live) || covered(name, &allowed) {
            continue;
        }
        if covered(name, &pending) {
            eprintln!("note: {name} is PENDING (not exported yet), used by {places:?}");
            continue;
        }
        missing.push(format!(
            "  {name} (used by {})",
            places.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    for (name, _) in PENDING {
        if live.contains_key(*name) || declared.contains_key(*name) {
            eprintln!(
                "note: PENDING {name} is now declared or exported by the broker: remove it from \
                 PENDING in bins/broker/tests/e2e/deploy.rs"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "metric names used under deploy/ that the broker does not export:\n{}\n\n\
         exported: {:?}\n\n/metrics:\n{text}",
        missing.join("\n"),
        live.keys().collect::<Vec<_>>()
    );
}

#[test]
fn metric_name_extraction() {
    let e = r#"sum(rate(kokino_executions_total{outcome="x"}[5m])) / kokino:execution_errors:ratio_rate5m + xkokino_no"#;
    assert_eq!(
        metric_names(e).into_iter().collect::<Vec<_>>(),
        vec!["kokino_executions_total"]
    );
    assert_eq!(
        recording_names(e).into_iter().collect::<Vec<_>>(),
        vec!["kokino:execution_errors:ratio_rate5m"]
    );
    let live = exported(
        "# HELP kokino_x_seconds help\n# TYPE kokino_x_seconds histogram\nkokino_x_seconds_bucket{le=\"1\"} 1\n# TYPE kokino_c_total counter\nkokino_c_total 3\n",
    );
    assert!(covered("kokino_x_seconds_bucket", &live));
    assert!(covered("kokino_x_seconds_count", &live));
    assert!(covered("kokino_c_total", &live));
    assert!(!covered("kokino_c_total_count", &live));
    assert!(!covered("kokino_y", &live));
    assert_eq!(slug(" Availability SLO burn"), "availability-slo-burn");
}
