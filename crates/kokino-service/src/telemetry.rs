//! Metric names and the asynchronous event writer.
//!
//! Metric names live in one table so that `docs/reference/metrics.md` can be generated from it
//! and checked against it. Events go through a channel to one writer task that inserts them in
//! batches: the execute path never waits for an event to reach the disk.

use kokino_store::{NewEvent, Store};
use tokio::sync::mpsc;

/// One exported metric: name, kind, labels and help text.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The Prometheus name.
    pub name: &'static str,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// The label names.
    pub labels: &'static [&'static str],
    /// The help text.
    pub help: &'static str,
}

/// `kokino_executions_total`; its kind, labels and help are in [`METRICS`].
pub const EXECUTIONS_TOTAL: &str = "kokino_executions_total";
/// `kokino_execution_duration_seconds`; its kind, labels and help are in [`METRICS`].
pub const EXECUTION_DURATION: &str = "kokino_execution_duration_seconds";
/// `kokino_lock_wait_seconds`; its kind, labels and help are in [`METRICS`].
pub const LOCK_WAIT: &str = "kokino_lock_wait_seconds";
/// `kokino_lock_timeouts_total`; its kind, labels and help are in [`METRICS`].
pub const LOCK_TIMEOUTS_TOTAL: &str = "kokino_lock_timeouts_total";
/// `kokino_lock_queue_depth`; its kind, labels and help are in [`METRICS`].
pub const QUEUE_DEPTH: &str = "kokino_lock_queue_depth";
/// `kokino_running_processes`; its kind, labels and help are in [`METRICS`].
pub const RUNNING_PROCESSES: &str = "kokino_running_processes";
/// `kokino_process_peak_rss_bytes`; its kind, labels and help are in [`METRICS`].
pub const PROCESS_PEAK_RSS: &str = "kokino_process_peak_rss_bytes";
/// `kokino_jsonl_parse_errors_total`; its kind, labels and help are in [`METRICS`].
pub const JSONL_PARSE_ERRORS_TOTAL: &str = "kokino_jsonl_parse_errors_total";
/// `kokino_http_requests_total`; its kind, labels and help are in [`METRICS`].
pub const HTTP_REQUESTS_TOTAL: &str = "kokino_http_requests_total";
/// `kokino_http_request_duration_seconds`; its kind, labels and help are in [`METRICS`].
pub const HTTP_REQUEST_DURATION: &str = "kokino_http_request_duration_seconds";
/// `kokino_http_panics_total`; its kind, labels and help are in [`METRICS`].
pub const HTTP_PANICS_TOTAL: &str = "kokino_http_panics_total";
/// `kokino_events_dropped_total`; its kind, labels and help are in [`METRICS`].
pub const EVENTS_DROPPED_TOTAL: &str = "kokino_events_dropped_total";
/// `kokino_integrity_issues`; its kind, labels and help are in [`METRICS`].
pub const INTEGRITY_ISSUES: &str = "kokino_integrity_issues";
/// `kokino_circuit_breakers`; its kind, labels and help are in [`METRICS`].
pub const CIRCUIT_BREAKERS: &str = "kokino_circuit_breakers";
/// `kokino_circuit_transitions_total`; its kind, labels and help are in [`METRICS`].
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "kokino_circuit_transitions_total";
/// `kokino_circuit_rejections_total`; its kind, labels and help are in [`METRICS`].
pub const CIRCUIT_REJECTIONS_TOTAL: &str = "kokino_circuit_rejections_total";
/// `kokino_fallback_overrides`; its kind, labels and help are in [`METRICS`].
pub const FALLBACK_OVERRIDES: &str = "kokino_fallback_overrides";
/// `kokino_rate_limited_rejections_total`; its kind, labels and help are in [`METRICS`].
pub const RATE_LIMITED_TOTAL: &str = "kokino_rate_limited_rejections_total";
/// `kokino_env_checks_total`; its kind, labels and help are in [`METRICS`].
pub const ENV_CHECKS_TOTAL: &str = "kokino_env_checks_total";
/// `kokino_shadow_results_total`; its kind, labels and help are in [`METRICS`].
pub const SHADOW_RESULTS_TOTAL: &str = "kokino_shadow_results_total";
/// `kokino_shadow_similarity_ratio`; its kind, labels and help are in [`METRICS`].
pub const SHADOW_SIMILARITY: &str = "kokino_shadow_similarity_ratio";
/// `kokino_shadow_latency_delta_seconds`; its kind, labels and help are in [`METRICS`].
pub const SHADOW_LATENCY_DELTA: &str = "kokino_shadow_latency_delta_seconds";
/// `kokino_env_check_failing`; its kind, labels and help are in [`METRICS`].
pub const ENV_CHECK_FAILING: &str = "kokino_env_check_failing";
/// `kokino_store_up`; its kind, labels and help are in [`METRICS`].
pub const STORE_UP: &str = "kokino_store_up";
/// See [`METRICS`].
pub const STORE_GROUPED_WRITES_TOTAL: &str = "kokino_store_grouped_writes_total";
/// See [`METRICS`].
pub const STORE_GROUP_COMMITS_TOTAL: &str = "kokino_store_group_commits_total";

/// Every metric the broker exports.
pub const METRICS: &[MetricDef] = &[
    MetricDef {
        name: EXECUTIONS_TOTAL,
        kind: "counter",
        labels: &["cli", "mode", "outcome"],
        help: "Finished executions by CLI type, mode and outcome class.",
    },
    MetricDef {
        name: EXECUTION_DURATION,
        kind: "histogram",
        labels: &["cli", "mode", "outcome"],
        help: "Execution duration from process start to result, in seconds.",
    },
    MetricDef {
        name: LOCK_WAIT,
        kind: "histogram",
        labels: &["cli"],
        help: "Time spent waiting for an agent's lock before executing, in seconds.",
    },
    MetricDef {
        name: LOCK_TIMEOUTS_TOTAL,
        kind: "counter",
        labels: &["cli"],
        help: "Requests that gave up waiting for an agent's lock (409 LOCK_TIMEOUT).",
    },
    MetricDef {
        name: QUEUE_DEPTH,
        kind: "gauge",
        labels: &[],
        help: "Requests currently waiting for an agent's lock, over all agents.",
    },
    MetricDef {
        name: RUNNING_PROCESSES,
        kind: "gauge",
        labels: &["cli", "mode"],
        help: "CLI executions currently running.",
    },
    MetricDef {
        name: PROCESS_PEAK_RSS,
        kind: "histogram",
        labels: &["cli"],
        help: "Peak resident memory of an execution's process group, in bytes.",
    },
    MetricDef {
        name: JSONL_PARSE_ERRORS_TOTAL,
        kind: "counter",
        labels: &["cli"],
        help: "CLI output lines that were not valid JSON events (never fatal).",
    },
    MetricDef {
        name: HTTP_REQUESTS_TOTAL,
        kind: "counter",
        labels: &["route", "method", "status"],
        help: "HTTP requests by matched route, method and status code.",
    },
    MetricDef {
        name: HTTP_REQUEST_DURATION,
        kind: "histogram",
        labels: &["route", "method"],
        help: "HTTP request latency, in seconds.",
    },
    MetricDef {
        name: HTTP_PANICS_TOTAL,
        kind: "counter",
        labels: &[],
        help: "HTTP handlers that panicked; each was answered with a 500 `INTERNAL` error, and the broker kept running.",
    },
    MetricDef {
        name: EVENTS_DROPPED_TOTAL,
        kind: "counter",
        labels: &[],
        help: "Telemetry events dropped because the event writer fell behind.",
    },
    MetricDef {
        name: INTEGRITY_ISSUES,
        kind: "gauge",
        labels: &[],
        help: "Integrity issues found by the latest integrity check (0 when clean).",
    },
    MetricDef {
        name: STORE_UP,
        kind: "gauge",
        labels: &[],
        help: "1 when the store answered a ping at this scrape (within 2 s), 0 when it did not.",
    },
    MetricDef {
        name: STORE_GROUPED_WRITES_TOTAL,
        kind: "counter",
        labels: &[],
        help: "SQLite only: execute-path writes (execution begin and finish, session ids, process ids, events) committed through group commit.",
    },
    MetricDef {
        name: STORE_GROUP_COMMITS_TOTAL,
        kind: "counter",
        labels: &[],
        help: "SQLite only: the commits that carried those writes (one fsync each when a write in it must be on disk, none when all of them only need to be committed: see \"Durability\" in `ARCHITECTURE.md`); writes per commit is how much group commit saved.",
    },
    MetricDef {
        name: CIRCUIT_BREAKERS,
        kind: "gauge",
        labels: &["scope", "state"],
        help: "Circuit breakers in each state (scope agent or cli).",
    },
    MetricDef {
        name: CIRCUIT_TRANSITIONS_TOTAL,
        kind: "counter",
        labels: &["scope", "to"],
        help: "Circuit breaker state changes, by the state entered.",
    },
    MetricDef {
        name: CIRCUIT_REJECTIONS_TOTAL,
        kind: "counter",
        labels: &["scope"],
        help: "Requests refused with 503 CIRCUIT_OPEN, by the scope of the refusing breaker.",
    },
    MetricDef {
        name: FALLBACK_OVERRIDES,
        kind: "gauge",
        labels: &["kind"],
        help: "Fallback overrides in force: disabled CLI types (cli) and agents forced to tmux (agent).",
    },
    MetricDef {
        name: RATE_LIMITED_TOTAL,
        kind: "counter",
        labels: &["cli"],
        help: "Requests refused with 503 RATE_LIMITED because the agent is parked until its quota resets.",
    },
    MetricDef {
        name: ENV_CHECKS_TOTAL,
        kind: "counter",
        labels: &["cli", "check", "result"],
        help: "Environment doctor checks run, by CLI type, check and result (pass, fail).",
    },
    MetricDef {
        name: ENV_CHECK_FAILING,
        kind: "gauge",
        labels: &["cli"],
        help: "1 when the latest environment doctor run of the CLI type failed, else 0.",
    },
    MetricDef {
        name: SHADOW_RESULTS_TOTAL,
        kind: "counter",
        labels: &["verdict"],
        help: "Shadow executions by verdict: matched, mismatched, headless_failed, tmux_failed, both_failed.",
    },
    MetricDef {
        name: SHADOW_SIMILARITY,
        kind: "histogram",
        labels: &[],
        help: "Similarity (0 to 1) of the two legs' answers when both succeeded.",
    },
    MetricDef {
        name: SHADOW_LATENCY_DELTA,
        kind: "histogram",
        labels: &[],
        help: "Headless minus tmux latency of shadow executions where both succeeded, in seconds (negative: headless faster).",
    },
];

/// Registers the help texts with whatever recorder is installed.
pub fn describe_metrics() {
    for m in METRICS {
        match m.kind {
            "counter" => metrics::describe_counter!(m.name, m.help),
            "gauge" => metrics::describe_gauge!(m.name, m.help),
            _ => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Bucket boundaries (seconds) for the execution-duration histogram: around 1, 5, 10, 30, 60,
/// 120 and 300 s as behavior.md asks, with finer buckets below a second for fast agents.
pub const EXECUTION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Histogram buckets of the lock wait, in seconds: mostly short, with a tail up to 300 s.
pub const LOCK_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Cheap handle for emitting events; sending never blocks.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<NewEvent>,
}

const EVENT_QUEUE: usize = 10_000;
const EVENT_BATCH: usize = 256;
/// How long the writer waits for more events after the first of a batch.
const EVENT_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

impl EventSink {
    /// Starts the writer task. It stops when every sink is dropped, after writing what is queued.
    pub fn spawn(store: Store) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<NewEvent>(EVENT_QUEUE);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(EVENT_BATCH);
            while rx.recv_many(&mut batch, EVENT_BATCH).await > 0 {
                // An execution emits several events within milliseconds; waiting a moment for
                // the rest writes them in one statement and one commit rather than one each
                // (on PostgreSQL, a commit and its fsync per event).
                let until = tokio::time::Instant::now() + EVENT_LINGER;
                while batch.len() < EVENT_BATCH {
                    let room = EVENT_BATCH - batch.len();
                    match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                if let Err(e) = store.insert_events(&batch).await {
                    tracing::warn!(error = %e, count = batch.len(), "could not write telemetry events");
                }
                batch.clear();
            }
        });
        (EventSink { tx }, task)
    }

    /// Queues an event for the writer; never waits (a full queue drops it and counts it).
    pub fn emit(&self, event: NewEvent) {
        if self.tx.try_send(event).is_err() {
            metrics::counter!(EVENTS_DROPPED_TOTAL).increment(1);
        }
    }
}

/// Shorthand for building an event.
pub fn event(event_type: &str, agent_id: Option<&str>, cli_type: Option<&str>) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        agent_id: agent_id.map(str::to_owned),
        cli_type: cli_type.map(str::to_owned),
        duration_ms: None,
        success: None,
        metadata: serde_json::Value::Object(Default::default()),
    }
}

/// `docs/reference/metrics.md`, generated from [`METRICS`]. A test compares the file with this
/// text, so the reference cannot drift from what the broker exports.
pub fn metrics_reference_markdown() -> String {
    let mut out = String::from(
        "# Metrics reference\n\n\
         Generated from `crates/kokino-service/src/telemetry.rs` (`METRICS`); a test fails when \
         this file and the code disagree. Regenerate with \
         `KOKINO_UPDATE_DOCS=1 cargo test -p kokino-service --test metrics_reference`.\n\n\
         `GET /metrics` serves them in the Prometheus text format. Labels are bounded: `cli` is \
         one of the four CLI types, `mode` one of headless/tmux/shadow, `outcome` one of the \
         outcome classes, `route` the route template (never a raw path).\n\n\
         | name | type | labels | meaning |\n|---|---|---|---|\n",
    );
    for m in METRICS {
        let labels = if m.labels.is_empty() {
            "—".to_owned()
        } else {
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            m.name, m.kind, labels, m.help
        ));
    }
    out.push_str(
        "\nHistograms are exported as `_bucket`, `_sum` and `_count` series. Execution duration \
         buckets (seconds): 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600.\n",
    );
    out
}

/// Creates the counters' label sets at zero, so that the first failures after a start are seen
/// by `rate()` and `increase()` (a series that appears with value 5 has no increase to show).
pub fn zero_counters() {
    use kokino_core::{CliType, CommMode, OutcomeClass};
    for cli in CliType::ALL {
        for mode in CommMode::ALL {
            for outcome in OutcomeClass::ALL {
                metrics::counter!(EXECUTIONS_TOTAL,
                    "cli" => cli.as_str(), "mode" => mode.as_str(), "outcome" => outcome.as_str())
                .increment(0);
            }
        }
        metrics::counter!(LOCK_TIMEOUTS_TOTAL, "cli" => cli.as_str()).increment(0);
        metrics::counter!(RATE_LIMITED_TOTAL, "cli" => cli.as_str()).increment(0);
        metrics::counter!(JSONL_PARSE_ERRORS_TOTAL, "cli" => cli.as_str()).increment(0);
    }
    metrics::counter!(HTTP_PANICS_TOTAL).increment(0);
    for scope in ["agent", "cli"] {
        metrics::counter!(CIRCUIT_REJECTIONS_TOTAL, "scope" => scope).increment(0);
        for to in ["closed", "open", "half_open", "forced_open", "disabled"] {
            metrics::counter!(CIRCUIT_TRANSITIONS_TOTAL, "scope" => scope, "to" => to).increment(0);
        }
    }
    for verdict in [
        "matched",
        "mismatched",
        "headless_failed",
        "tmux_failed",
        "both_failed",
    ] {
        metrics::counter!(SHADOW_RESULTS_TOTAL, "verdict" => verdict).increment(0);
    }
    metrics::counter!(EVENTS_DROPPED_TOTAL).increment(0);
}
