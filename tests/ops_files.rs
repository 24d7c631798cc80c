//! The operations endpoint and files, without services: `/metrics` served over HTTP parses as
//! Prometheus text, the endpoint is read-only, and every metric the shipped alert rules and
//! Grafana dashboard use is one the job exposes.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use wrongbook::dataflow::ingest::{OutcomeCounts, TypeCounts};
use wrongbook::dataflow::route::{RouteTable, Routing};
use wrongbook::ops::http::OpsServer;
use wrongbook::ops::report::JobCounters;
use wrongbook::source::dims::{DimSnapshot, DimStats};
use wrongbook::source::file::PartitionProgress;
use wrongbook::spec::Spec;

/// Counters with one sample of every labelled family.
fn counters() -> JobCounters {
    let counters = JobCounters {
        source: Default::default(),
        sink: Default::default(),
        dataflow: Default::default(),
        checkpoints: Default::default(),
        caught_up_workers: Default::default(),
        workers: 2,
        routing: Routing::fixed(RouteTable::default()),
        dims: Arc::new(DimStats::default()),
        alerts: Default::default(),
        dead_letters: Default::default(),
        process: 0,
        processes: 1,
        started_ms: 0,
    };
    let mut outcomes = OutcomeCounts::default();
    let mut counts = TypeCounts {
        accepted: 7,
        ..Default::default()
    };
    counts.dead_letters.insert("invalid_json", 2);
    outcomes.by_type.insert("wrongbook_add".into(), counts);
    counters
        .dataflow
        .outcomes
        .lock()
        .unwrap()
        .insert(0, outcomes);
    counters.source.partitions.lock().unwrap().insert(
        0,
        PartitionProgress {
            next_offset: 5,
            high_watermark: 9,
        },
    );
    counters
        .dims
        .loaded(&DimSnapshot::default(), &Spec::builtin().dimensions);
    counters
}

fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

fn exposed_metrics() -> (BTreeSet<String>, String) {
    let server = OpsServer::start("127.0.0.1:0", counters()).unwrap();
    let (status, body) = request(server.addr(), "GET", "/metrics");
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("parses as Prometheus text");
    let mut names = BTreeSet::new();
    for sample in &scrape.samples {
        names.insert(sample.metric.clone());
        if let prometheus_parse::Value::Histogram(_) = sample.value {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", sample.metric));
            }
        }
    }
    (names, body)
}

#[test]
fn metrics_are_served_read_only_as_prometheus_text() {
    let server = OpsServer::start("127.0.0.1:0", counters()).unwrap();
    let (status, body) = request(server.addr(), "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains(
            "wrongbook_events_total{event_type=\"wrongbook_add\",outcome=\"accepted\"} 7"
        ),
        "{body}"
    );
    assert!(
        body.contains("wrongbook_consumer_lag{partition=\"0\"} 4"),
        "{body}"
    );
    assert_eq!(request(server.addr(), "POST", "/metrics").0, 405);
    assert_eq!(request(server.addr(), "GET", "/nope").0, 404);
}

#[test]
fn a_busy_port_is_one_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let error = OpsServer::start(&addr, counters())
        .err()
        .expect("the port is taken");
    let text = error.to_string();
    assert!(
        text.contains(&addr) && text.contains("metrics.listen"),
        "{text}"
    );
}

/// The `wrongbook_*` names in `text`.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("wrongbook_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn alert_rules_and_dashboard_use_only_exposed_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (exposed, body) = exposed_metrics();
    let rules = std::fs::read_to_string(root.join("config/alerts.rules.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("config/grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let panels = parsed["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    assert!(panels
        .iter()
        .all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())));
    for (file, text) in [
        ("alerts.rules.yml", &rules),
        ("grafana-dashboard.json", &dashboard),
    ] {
        let used = referenced(text);
        assert!(used.len() > 3, "{file} uses metrics");
        for name in used {
            // Rule and dashboard names other than metrics: the group and the dashboard uid.
            if name == "wrongbook_" {
                continue;
            }
            assert!(
                exposed.contains(&name),
                "{file} uses `{name}`, which /metrics does not expose:\n{body}"
            );
        }
    }
    // The thresholds the job evaluates are the ones the rules state.
    let defaults = wrongbook::config::MetricsConfig::default();
    assert_eq!(defaults.latency_critical.0.as_secs(), 30);
    assert!(rules.contains("> 30") && rules.contains("> 0.01"));
    assert!(rules.contains(&format!("> {}", defaults.state_bytes_warning)));
}
