//! `docs/reference/metrics.md` is generated from the metric table in the code.

use std::path::Path;

#[test]
fn the_metrics_reference_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/reference/metrics.md");
    let want = kokino_service::telemetry::metrics_reference_markdown();
    if std::env::var_os("KOKINO_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        have, want,
        "docs/reference/metrics.md is stale; run KOKINO_UPDATE_DOCS=1 cargo test -p kokino-service --test metrics_reference"
    );
}

#[test]
fn metric_names_follow_prometheus_conventions() {
    for m in kokino_service::telemetry::METRICS {
        assert!(m.name.starts_with("kokino_"), "{}", m.name);
        match m.kind {
            "counter" => assert!(m.name.ends_with("_total"), "{}", m.name),
            "histogram" => assert!(
                m.name.ends_with("_seconds")
                    || m.name.ends_with("_bytes")
                    || m.name.ends_with("_ratio"),
                "{}: histograms carry their unit",
                m.name
            ),
            "gauge" => assert!(!m.name.ends_with("_total"), "{}", m.name),
            other => panic!("unknown kind {other}"),
        }
        assert!(
            !m.labels.contains(&"agent") && !m.labels.contains(&"agent_id"),
            "{}: unbounded label",
            m.name
        );
    }
}
