//! `--url` mode: the full diagnosis of a running broker, what `diagnose-headless.sh` meant to
//! do, without curl, jq or bc and without its bugs: a 503 from the environment or integrity
//! endpoint is an answer to read, not "API error", and an endpoint this broker does not serve
//! (404 `NOT_FOUND`) is reported as skipped instead of failed.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use kokino_core::CliType;
use kokino_doctor::{CliReport, EnvironmentReport};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;

use crate::output::{self, Status};
use crate::{Args, Format};

/// A lock held this long is stuck (the operations guide, scenario 1: "executing for >5 minutes").
const STALE_LOCK_MS: i64 = 5 * 60 * 1000;

/// One line of the broker diagnosis.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Section {
    pub name: &'static str,
    pub endpoint: String,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BrokerReport {
    mode: &'static str,
    url: String,
    checked_at: chrono::DateTime<Utc>,
    passed: bool,
    checks: Vec<Section>,
    /// The broker's own environment report, when it serves one.
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<EnvironmentReport>,
}

enum Answer {
    Json(StatusCode, Value),
    /// The endpoint does not exist in this broker.
    Missing,
    Failed(String, Option<u16>),
}

/// The broker, through `kokino-client`. The section readers below take the answers as JSON
/// values, because a diagnosis must report a broker whose answers do not have the documented
/// shape instead of failing to parse them.
struct Client {
    api: kokino_client::Client,
}

impl Client {
    /// GETs `path` and sorts the answer. `accepted` are the statuses whose JSON body is an
    /// answer (the environment and integrity endpoints answer 503 when they find a problem).
    async fn fetch(&self, path: &str, accepted: &[StatusCode]) -> Answer {
        let also_ok: Vec<u16> = accepted.iter().map(StatusCode::as_u16).collect();
        match self.api.get_json(path, &also_ok).await {
            Ok((code, v)) => Answer::Json(status_of(code), v),
            Err(e) => sort_error(e),
        }
    }
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn sort_error(e: kokino_client::Error) -> Answer {
    use kokino_client::Error as E;
    let Some(code) = e.status() else {
        return Answer::Failed(format!("{e}"), None);
    };
    let status = status_of(code);
    if status == StatusCode::NOT_FOUND {
        return Answer::Missing;
    }
    if status == StatusCode::UNAUTHORIZED {
        return Answer::Failed(
            "the broker wants a bearer token: pass --token-file".into(),
            Some(code),
        );
    }
    match e {
        E::Api { body, .. } => Answer::Failed(format!("HTTP {status}: {}", body.error), Some(code)),
        E::Decode { .. } => Answer::Failed(
            format!("HTTP {status}, and the body is not JSON"),
            Some(code),
        ),
        _ => Answer::Failed(
            format!("HTTP {status}, and the body is not JSON"),
            Some(code),
        ),
    }
}

fn section(name: &'static str, endpoint: &str, status: Status, message: String) -> Section {
    Section {
        name,
        endpoint: endpoint.to_owned(),
        status,
        message,
        http_status: None,
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// Reads the answer of one endpoint into a section, or says why it could not.
fn sorted(
    name: &'static str,
    endpoint: &str,
    answer: Answer,
    note_if_missing: &str,
    read: impl FnOnce(StatusCode, &Value) -> Option<(Status, String)>,
) -> Section {
    match answer {
        Answer::Missing => section(
            name,
            endpoint,
            Status::Skipped,
            format!("not served by this broker (404){note_if_missing}"),
        ),
        Answer::Failed(msg, code) => Section {
            http_status: code,
            ..section(name, endpoint, Status::Fail, msg)
        },
        Answer::Json(code, v) => {
            let (status, message) = read(code, &v).unwrap_or_else(|| {
                (
                    Status::Fail,
                    "the answer does not have the documented shape".to_owned(),
                )
            });
            Section {
                http_status: Some(code.as_u16()),
                ..section(name, endpoint, status, message)
            }
        }
    }
}

fn health(code: StatusCode, v: &Value) -> Option<(Status, String)> {
    let status = v.get("status")?.as_str()?;
    if code == StatusCode::OK && status == "ok" {
        Some((
            Status::Ok,
            format!(
                "ok: version {}, up {} s, {} agent(s), {} executing, store {}",
                str_of(v, "version"),
                v.get("uptimeSeconds").and_then(Value::as_u64).unwrap_or(0),
                v.get("agents").and_then(Value::as_u64).unwrap_or(0),
                v.get("executing").and_then(Value::as_u64).unwrap_or(0),
                str_of(v, "store"),
            ),
        ))
    } else {
        let reasons: Vec<String> = v
            .get("reasons")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|r| {
                        r.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| r.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some((Status::Fail, format!("{status}: {}", reasons.join("; "))))
    }
}

fn sessions(base: &str, now_ms: i64, v: &Value) -> Option<(Status, String)> {
    let list = v.as_array()?;
    let flag = |s: &Value, k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
    let locked = list.iter().filter(|s| flag(s, "locked")).count();
    let executing = list.iter().filter(|s| flag(s, "executing")).count();
    let stale: Vec<String> = list
        .iter()
        .filter(|s| flag(s, "locked"))
        .filter_map(|s| {
            let started = s.get("executionStartedAt")?.as_i64()?;
            let age = now_ms - started;
            (age > STALE_LOCK_MS)
                .then(|| format!("{} ({} min)", str_of(s, "agentId"), age / 60_000))
        })
        .collect();
    let summary = format!(
        "{} session(s), {locked} locked, {executing} executing",
        list.len()
    );
    if stale.is_empty() {
        Some((Status::Ok, format!("{summary}; no lock older than 5 min")))
    } else {
        Some((
            Status::Warn,
            format!(
                "{summary}; locked for more than 5 min: {}. Cancel with `curl -X POST \
                 {base}/agents/<id>/execute/cancel`; if it stays stuck, `curl -X POST \
                 {base}/agents/<id>/end-session`",
                stale.join(", ")
            ),
        ))
    }
}

fn circuits(base: &str, v: &Value) -> Option<(Status, String)> {
    let list = v.get("circuits")?.as_array()?;
    let in_state = |states: &[&str]| -> Vec<String> {
        list.iter()
            .filter(|c| states.contains(&str_of(c, "state")))
            .map(|c| {
                let reason = c
                    .get("lastFailureReason")
                    .and_then(Value::as_str)
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                format!(
                    "{} {} ({}){reason}",
                    str_of(c, "scope"),
                    str_of(c, "key"),
                    str_of(c, "state")
                )
            })
            .collect()
    };
    let open = in_state(&["open", "forced_open"]);
    let half = in_state(&["half_open"]);
    if !open.is_empty() {
        Some((
            Status::Fail,
            format!(
                "{} of {} circuit(s) open: {}. Fix the cause, then wait for the retry or reset: \
                 `curl -X POST {base}/agents/<id>/circuit/reset` (CLI scope: \
                 /api/circuits/cli/<type>/reset)",
                open.len(),
                list.len(),
                open.join(", ")
            ),
        ))
    } else if !half.is_empty() {
        Some((
            Status::Warn,
            format!(
                "{} circuit(s) half open (trying again): {}",
                half.len(),
                half.join(", ")
            ),
        ))
    } else {
        Some((Status::Ok, format!("{} circuit(s), none open", list.len())))
    }
}

fn fallback(base: &str, v: &Value) -> Option<(Status, String)> {
    let cli = v.get("disabledCLIs")?.as_array()?;
    let agents = v.get("forcedFallbacks")?.as_array()?;
    if cli.is_empty() && agents.is_empty() {
        return Some((
            Status::Ok,
            "no CLI disabled, no agent forced to tmux".into(),
        ));
    }
    let describe = |x: &Value, key: &str| {
        let auto = if x.get("auto").and_then(Value::as_bool) == Some(true) {
            ", automatic"
        } else {
            ""
        };
        format!(
            "{} since {} ({}{auto})",
            str_of(x, key),
            str_of(x, "since"),
            str_of(x, "reason")
        )
    };
    let mut parts = Vec::new();
    if !cli.is_empty() {
        parts.push(format!(
            "disabled CLIs: {}",
            cli.iter()
                .map(|c| describe(c, "cliType"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !agents.is_empty() {
        parts.push(format!(
            "agents forced to tmux: {}",
            agents
                .iter()
                .map(|a| describe(a, "agentId"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Some((
        Status::Warn,
        format!(
            "{} (empty in steady state). Re-enable with `curl -X POST {base}/api/fallback/cli/enable \
             -d '{{\"cliType\":\"…\"}}'` or clear with `curl -X DELETE {base}/api/fallback/agent/<id>`",
            parts.join("; ")
        ),
    ))
}

fn slo(v: &Value) -> Option<(Status, String)> {
    let availability = v.get("availability")?;
    let breached: Vec<&str> = [
        "availability",
        "latency",
        "correctness",
        "integrity",
        "resources",
    ]
    .into_iter()
    .filter(|k| {
        v.get(*k)
            .and_then(|s| s.get("breached"))
            .and_then(Value::as_bool)
            == Some(true)
    })
    .collect();
    let num = |x: Option<&Value>| x.and_then(Value::as_f64).map(|f| format!("{f:.4}"));
    let summary = format!(
        "availability {} (target {}), p95 {} ms",
        num(availability.get("current")).unwrap_or_else(|| "?".into()),
        num(availability.get("target")).unwrap_or_else(|| "?".into()),
        v.pointer("/latency/p95Ms")
            .and_then(Value::as_f64)
            .map(|f| format!("{f:.0}"))
            .unwrap_or_else(|| "?".into())
    );
    if breached.is_empty() {
        Some((Status::Ok, format!("{summary}; no SLO breached")))
    } else {
        Some((
            Status::Warn,
            format!("{summary}; breached: {}", breached.join(", ")),
        ))
    }
}

fn integrity(base: &str, code: StatusCode, v: &Value) -> Option<(Status, String)> {
    let passed = v.get("passed")?.as_bool()?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let summary = format!(
        "{} conversation(s), {} turn(s)",
        n("totalConversations"),
        n("totalTurns")
    );
    if passed && code == StatusCode::OK {
        Some((Status::Ok, format!("{summary}, no issues")))
    } else {
        Some((
            Status::Fail,
            format!(
                "{summary}: {} conversation(s) with issues, {} orphaned turn(s). Details: `curl \
                 {base}/api/integrity/check`; repair: `curl -X POST {base}/api/integrity/cleanup`",
                n("conversationsWithIssues"),
                n("orphanedTurns")
            ),
        ))
    }
}

fn shadow(v: &Value) -> Option<(Status, String)> {
    let total = v.get("totalTests")?.as_u64()?;
    if total == 0 {
        return Some((Status::Ok, "no shadow-mode executions recorded".into()));
    }
    let rate = v
        .get("outputMatchRate")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let pct = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_f64)
            .map(|f| format!("{:.1}%", f * 100.0))
            .unwrap_or_else(|| "?".into())
    };
    let summary = format!(
        "{total} shadow test(s) in {} day(s): output match {:.1}%, success tmux {} / headless {}",
        v.get("days").and_then(Value::as_u64).unwrap_or(30),
        rate * 100.0,
        pct("/successRates/tmux"),
        pct("/successRates/headless"),
    );
    if rate < 0.95 {
        Some((
            Status::Warn,
            format!("{summary}; the match rate is below 95 %: see /api/shadow-mode/mismatches"),
        ))
    } else {
        Some((Status::Ok, summary))
    }
}

/// Reads the broker's environment answer: one CLI's report (`?cli=`) or all of them.
fn parse_environment(v: Value) -> Option<EnvironmentReport> {
    if v.get("results").is_some() {
        serde_json::from_value::<EnvironmentReport>(v).ok()
    } else {
        serde_json::from_value::<CliReport>(v)
            .ok()
            .map(|r| EnvironmentReport::from_results(r.checked_at, vec![r]))
    }
}

/// One section per CLI type of the broker's environment report.
fn environment_sections(
    endpoint: &str,
    code: StatusCode,
    report: &EnvironmentReport,
) -> Vec<Section> {
    report
        .results
        .iter()
        .map(|r| {
            let (status, message) = if !r.passed {
                let failed: Vec<String> = r
                    .checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| format!("{}: {}", c.name, c.message))
                    .collect();
                (
                    Status::Fail,
                    format!("{}: {}", r.cli_type, failed.join("; ")),
                )
            } else if !r.warnings.is_empty() {
                (
                    Status::Warn,
                    format!(
                        "{}: passed; warnings: {}",
                        r.cli_type,
                        r.warnings.join("; ")
                    ),
                )
            } else {
                (Status::Ok, format!("{}: all checks passed", r.cli_type))
            };
            Section {
                http_status: Some(code.as_u16()),
                ..section("environment", endpoint, status, message)
            }
        })
        .collect()
}

pub async fn run(args: &Args, url: &str, clis: &[CliType], token: Option<String>) -> Result<bool> {
    let base = url.trim_end_matches('/').to_owned();
    if !base.starts_with("http://") && !base.starts_with("https://") {
        bail!("--url must start with http:// (got {url:?})");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.http_timeout_ms))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("cannot build the HTTP client")?;
    let mut api = kokino_client::Client::with_http(&base, http)?;
    if let Some(t) = token {
        api = api.with_token(t);
    }
    let client = Client { api };
    let ok_only = [StatusCode::OK];
    let ok_or_503 = [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE];

    // The broker must answer /health at all; if it does not, the doctor could not run.
    let health_answer = match client.api.get_json("/health", &[503]).await {
        Ok((code, v)) => Answer::Json(status_of(code), v),
        Err(kokino_client::Error::Transport(e)) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot reach the broker at {base}; is it running?")))
        }
        Err(e) => Answer::Failed(
            format!(
                "HTTP {} from /health; is {base} a Kokino broker?",
                e.status().map(status_of).unwrap_or(StatusCode::BAD_GATEWAY)
            ),
            e.status(),
        ),
    };
    let mut checks = vec![sorted("health", "/health", health_answer, "", health)];

    let env_endpoint = match clis {
        [one] => format!("/api/health/environment?cli={one}"),
        _ => "/api/health/environment".to_owned(),
    };
    let (env_sections, env_report) = match client.fetch(&env_endpoint, &ok_or_503).await {
        Answer::Json(code, v) => match parse_environment(v) {
            Some(mut report) => {
                // A broker that answers for every type is narrowed to the ones asked for.
                report.results.retain(|r| clis.contains(&r.cli_type));
                report.overall = report.results.iter().all(|r| r.passed);
                (
                    environment_sections(&env_endpoint, code, &report),
                    Some(report),
                )
            }
            None => (
                vec![sorted(
                    "environment",
                    &env_endpoint,
                    Answer::Json(code, Value::Null),
                    "",
                    |_, _| None,
                )],
                None,
            ),
        },
        other => (
            vec![sorted(
                "environment",
                &env_endpoint,
                other,
                "; run `kokino-doctor` without --url on the broker's host for the local checks",
                |_, _| None,
            )],
            None,
        ),
    };
    checks.extend(env_sections);

    let now_ms = Utc::now().timestamp_millis();
    let p = "/agents/sessions/status";
    checks.push(sorted(
        "sessions",
        p,
        client.fetch(p, &ok_only).await,
        "",
        |_, v| sessions(&base, now_ms, v),
    ));
    let p = "/agents/circuits/status";
    checks.push(sorted(
        "circuits",
        p,
        client.fetch(p, &ok_only).await,
        "",
        |_, v| circuits(&base, v),
    ));
    let p = "/api/fallback/status";
    checks.push(sorted(
        "fallback",
        p,
        client.fetch(p, &ok_only).await,
        "",
        |_, v| fallback(&base, v),
    ));
    let p = "/api/slo/status";
    checks.push(sorted(
        "slo",
        p,
        client.fetch(p, &ok_only).await,
        "",
        |_, v| slo(v),
    ));
    let p = "/api/integrity/check";
    checks.push(sorted(
        "integrity",
        p,
        client.fetch(p, &ok_or_503).await,
        "",
        |c, v| integrity(&base, c, v),
    ));
    let p = "/api/shadow-mode/metrics";
    checks.push(sorted(
        "shadow",
        p,
        client.fetch(p, &ok_only).await,
        "",
        |_, v| shadow(v),
    ));

    let failed = checks.iter().any(|c| c.status == Status::Fail);
    let warned = checks.iter().any(|c| c.status == Status::Warn);
    let passed = !(failed || (args.strict && warned));
    let report = BrokerReport {
        mode: "broker",
        url: base.clone(),
        checked_at: Utc::now(),
        passed,
        checks,
        environment: env_report,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", render(&report)),
    }
    Ok(passed)
}

fn render(report: &BrokerReport) -> String {
    let mut out = format!("kokino-doctor: broker at {}\n", report.url);
    let mut env_done = false;
    for s in &report.checks {
        // The broker's environment answer is shown check by check, like the local report.
        if let (true, Some(env)) = (s.name == "environment", &report.environment) {
            if !env_done {
                let status = if env.overall {
                    Status::Ok
                } else {
                    Status::Fail
                };
                output::line(&mut out, 0, status, "environment", &s.endpoint);
                output::environment_report(&mut out, 2, env);
                env_done = true;
            }
            continue;
        }
        output::line(&mut out, 0, s.status, s.name, &s.message);
    }
    let count = |st: Status| report.checks.iter().filter(|c| c.status == st).count();
    out.push_str(&format!(
        "\n{}: {} ok, {} warning(s), {} failed, {} skipped\n",
        if report.passed { "OK" } else { "FAILED" },
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skipped)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stale_locks_are_flagged() {
        let now = 10_000_000_000;
        let v = json!([
            {"agentId":"a","locked":true,"executing":true,"executionStartedAt": now - 6 * 60_000},
            {"agentId":"b","locked":true,"executing":true,"executionStartedAt": now - 60_000},
            {"agentId":"c","locked":false,"executing":false,"executionStartedAt": null}
        ]);
        let (st, msg) = sessions("http://x", now, &v).unwrap();
        assert_eq!(st, Status::Warn);
        assert!(msg.contains("a (6 min)") && !msg.contains("b ("), "{msg}");
        assert!(msg.contains("3 session(s), 2 locked, 2 executing"));
    }

    #[test]
    fn open_circuits_fail_and_lowercase_states_are_read() {
        let v = json!({"circuits":[
            {"scope":"agent","key":"a","state":"open","lastFailureReason":"auth_error"},
            {"scope":"cli","key":"codex","state":"closed"}
        ]});
        let (st, msg) = circuits("http://x", &v).unwrap();
        assert_eq!(st, Status::Fail);
        assert!(msg.contains("agent a (open): auth_error"), "{msg}");
        let (st, _) = circuits("http://x", &json!({"circuits":[]})).unwrap();
        assert_eq!(st, Status::Ok);
    }

    #[test]
    fn fallback_slo_integrity_and_shadow_shapes() {
        let v = json!({"disabledCLIs":[{"cliType":"gemini","reason":"doctor","since":"t","auto":true}],"forcedFallbacks":[]});
        assert_eq!(fallback("http://x", &v).unwrap().0, Status::Warn);
        let v = json!({"disabledCLIs":[],"forcedFallbacks":[]});
        assert_eq!(fallback("http://x", &v).unwrap().0, Status::Ok);

        let v = json!({"availability":{"current":0.99,"target":0.995,"breached":true},"latency":{"p95Ms":1200.0,"breached":false}});
        let (st, msg) = slo(&v).unwrap();
        assert_eq!(st, Status::Warn);
        assert!(msg.contains("breached: availability"), "{msg}");

        let v = json!({"passed":false,"totalConversations":3,"totalTurns":9,"orphanedTurns":1,"conversationsWithIssues":1});
        assert_eq!(
            integrity("http://x", StatusCode::SERVICE_UNAVAILABLE, &v)
                .unwrap()
                .0,
            Status::Fail
        );

        let v = json!({"days":30,"totalTests":10,"outputMatchRate":0.5,"successRates":{"tmux":1.0,"headless":0.9}});
        assert_eq!(shadow(&v).unwrap().0, Status::Warn);
        assert!(shadow(&json!({})).is_none());
    }
}
