//! The status page of a running job (`wrongbook run` against Tansu and MariaDB): `/api/status`
//! figures match what was processed, `/api/dead-letters` shows the recent dead letters as safe
//! text, and headless Chromium renders `/` with the live counts, showing a dead letter that holds
//! `<script>` as text. A screenshot is saved to `target/test-artifacts/status-page.png`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::job::{http_get, job_config, start_job, terminate, wait_for_table};
use common::reference::Model;
use common::{services_required, KafkaBroker, TestDatabase};
use serde_json::Value;
use wrongbook::commands::gen::{dims_sql, generate, produce_messages, routing_sql, GenOptions};
use wrongbook::commands::init_db::init_db;

const HOSTILE: &str = "<script>document.title='pwned'</script>";

/// Waits until `check` holds on `/api/status`, or fails with the last answer.
fn wait_for_status(addr: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, body)) = http_get(addr, "/api/status") {
            let value: Value = serde_json::from_str(&body).unwrap();
            if check(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {value:#}"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

/// Runs headless Chromium on `url` with `args`, letting the page's scripts run for a while.
fn headless(browser: &Path, url: &str, args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=8000",
            &format!("--user-data-dir={}", profile.path().display()),
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[test]
fn the_status_page_shows_the_running_job() {
    let (Some(broker), Some(db)) = (KafkaBroker::start(), TestDatabase::mariadb()) else {
        return;
    };
    let (config, config_path, addr) = job_config(&db, &broker, "events-status", "");
    let generated = generate(&GenOptions {
        events: 3_000,
        seed: 71,
        ..GenOptions::default()
    });
    let mut conn = init_db(&config, None).unwrap();
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();
    let mut messages = generated.messages.clone();
    messages.push(HOSTILE.as_bytes().to_vec());
    let mut model = Model::default();
    for m in &messages {
        model.feed(m);
    }
    produce_messages(&config.kafka, &messages).unwrap();
    let log = db.dir().join("run.log");
    let job = start_job(&config_path, &log);
    wait_for_table(
        &db,
        &model.table(&generated.dims),
        Duration::from_secs(120),
        &log,
    );

    // The figures match what was processed.
    let produced = messages.len() as u64;
    let s = wait_for_status(&addr, "every event counted and no lag", |s| {
        s["pipeline"]["source"]["messages"] == produced
            && s["totals"]["accepted"] == model.accepted as u64
            && s["partitions"].as_array().is_some_and(|p| {
                p.len() == 4 && p.iter().all(|p| p["lag"] == 0 && p["high_watermark"] != 0)
            })
    });
    assert_eq!(
        s["totals"]["dead_letters"]
            .as_object()
            .map(|d| d.values().map(|n| n.as_u64().unwrap()).sum::<u64>()),
        Some(model.dead as u64)
    );
    assert_eq!(s["pipeline"]["route"]["dead_letters"], model.dead as u64);
    assert_eq!(
        s["pipeline"]["state"]["live_records"],
        model.table(&generated.dims).len() as u64
    );
    assert_eq!(s["job"]["process"], 0);
    assert_eq!(s["job"]["processes"], 1);
    assert_eq!(s["job"]["workers"], 2);
    assert_eq!(s["job"]["caught_up"], true);
    assert_eq!(s["routing"]["version"], 1);
    assert_eq!(s["routing"]["rows"].as_array().unwrap().len(), 6);
    let dims = s["dimensions"].as_array().unwrap();
    assert_eq!(dims.len(), 4, "the chain and the example lookup table");
    assert!(dims.iter().any(|d| d["table"] == "question_bank"));
    let pattern = dims.iter().find(|d| d["table"] == "tower_pattern").unwrap();
    assert_eq!(pattern["rows"], generated.dims.patterns.len() as u64);
    assert!(
        s["sink"]["rows_upserted"].as_u64().unwrap() >= model.table(&generated.dims).len() as u64
    );
    assert!(s["latency"]["p99"].as_f64().is_some());
    assert!(s["alerts"].as_array().unwrap().is_empty());

    // The recent dead letters, newest first, the raw bytes as text.
    let (code, body) = http_get(&addr, "/api/dead-letters?limit=5").unwrap();
    assert_eq!(code, 200);
    let letters: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(letters.len(), 5);
    let hostile = serde_json::from_str::<Vec<Value>>(
        &http_get(&addr, "/api/dead-letters?limit=200").unwrap().1,
    )
    .unwrap()
    .into_iter()
    .find(|l| l["preview"] == HOSTILE)
    .expect("the <script> message is a recent dead letter");
    assert_eq!(hostile["reason"], "invalid_json");
    assert_eq!(hostile["source"]["topic"], "events-status");

    // The page in a browser, after its JavaScript ran.
    let Some(browser) = chromium() else {
        assert!(!services_required(), "chromium is required under CI");
        eprintln!("skipping the browser part: chromium is not installed");
        assert!(terminate(job).success());
        return;
    };
    let url = format!("http://{addr}/");
    let out = headless(&browser, &url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-updated="),
        "the page loaded its data: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted = format_thousands(model.accepted as u64);
    assert!(
        dom.contains(&format!("{accepted} accepted")),
        "the route stage shows {accepted} accepted: {dom}"
    );
    assert!(dom.contains(&format!("{} messages", format_thousands(produced))));
    assert!(dom.contains("process 0 of 1"));
    assert!(dom.contains("tower_teaching_type_pt"));
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "the <script> dead letter is shown as text"
    );
    assert!(!dom.contains(HOSTILE), "no dead letter is rendered as HTML");
    assert!(dom.contains("<title>wrongbook status</title>"));

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(
        &browser,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1900",
            "--hide-scrollbars",
        ],
    );
    assert!(
        shot.metadata().is_ok_and(|m| m.len() > 10_000),
        "a screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(terminate(job).success());
}

/// `n` as the page shows it (en-US grouping).
fn format_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
