//! The `wrongbook` binary as a user runs it: `--help` explains every command, the shipped
//! configurations load, bad configuration gives one clear error and a non-zero exit, secrets
//! never print, and gen → init-db --load → replay works from the command line.

mod common;

use std::ffi::OsStr;
use std::process::{Command, Output};

fn wrongbook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wrongbook"))
        .args(args)
        .env_remove("WRONGBOOK_LOG")
        .output()
        .expect("run the wrongbook binary")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn help_explains_every_command() {
    let top = wrongbook(&["--help"]);
    assert!(top.status.success());
    for command in ["demo", "init-db", "replay", "gen"] {
        assert!(
            text(&top).contains(command),
            "top-level help lists {command}"
        );
        let help = wrongbook(&[command, "--help"]);
        assert!(help.status.success(), "{command} --help");
        assert!(
            text(&help).len() > 300,
            "{command} --help explains: {}",
            text(&help)
        );
    }
    assert!(text(&wrongbook(&["replay", "--help"])).contains("--dims-after"));
}

#[test]
fn shipped_configurations_load() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["config/wrongbook.toml", "config/sqlite.toml"] {
        let config = wrongbook::config::Config::load_with_env(
            Some(&std::path::Path::new(root).join(file)),
            Vec::new(),
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        config
            .load_spec()
            .unwrap_or_else(|e| panic!("{file}: spec: {e}"));
    }
}

#[test]
fn bad_configuration_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = wrongbook(&[
        "replay",
        "-c",
        missing.to_str().unwrap(),
        "--input",
        "x.jsonl",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nope.toml"), "{}", text(&out));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "workers = \"two\"\n").unwrap();
    let out = wrongbook(&["init-db", "-c", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("bad.toml") && text(&out).contains("workers"),
        "{}",
        text(&out)
    );

    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, "domain = \"x\"\n").unwrap();
    let with_spec = dir.path().join("with-spec.toml");
    std::fs::write(
        &with_spec,
        format!(
            "spec = \"spec.toml\"\n[mysql]\nurl = \"sqlite://{}\"\n",
            dir.path().join("x.db").display()
        ),
    )
    .unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{}\n").unwrap();
    let out = wrongbook(&[
        "replay",
        "-c",
        with_spec.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("spec.toml"), "{}", text(&out));

    // A database without the tables says how to create them.
    let no_tables = dir.path().join("no-tables.toml");
    std::fs::write(
        &no_tables,
        format!(
            "[mysql]\nurl = \"sqlite://{}\"\n",
            dir.path().join("empty.db").display()
        ),
    )
    .unwrap();
    let out = wrongbook(&[
        "replay",
        "-c",
        no_tables.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("init-db"), "{}", text(&out));
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
}

#[test]
fn secrets_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[mysql]\nurl = \"mysql://127.0.0.1:1/wb\"\nusername = \"root\"\npassword = \"hunter2-secret\"\n",
    )
    .unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wrongbook"))
        .args([
            "--log",
            "debug",
            "replay",
            "-c",
            config.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
        .env("WRONGBOOK_KAFKA__PASSWORD", "kafka-secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = text(&out);
    assert!(
        all.contains("127.0.0.1:1"),
        "the error names the address: {all}"
    );
    assert!(
        !all.contains("hunter2-secret") && !all.contains("kafka-secret"),
        "{all}"
    );
}

#[test]
fn gen_init_db_and_replay_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let gen = |out: &str| {
        wrongbook(&[
            "gen",
            "--events",
            "3000",
            "--seed",
            "11",
            "--out",
            out,
            "--dims-out",
            &path("dims.sql"),
            "--dims-change-out",
            &path("change.sql"),
        ])
    };
    assert!(gen(&path("a.jsonl")).status.success());
    assert!(gen(&path("b.jsonl")).status.success());
    assert_eq!(
        std::fs::read(path("a.jsonl")).unwrap(),
        std::fs::read(path("b.jsonl")).unwrap(),
        "deterministic"
    );

    let config = path("job.toml");
    std::fs::write(&config, "[mysql]\nurl = \"sqlite://job.db\"\n").unwrap();
    let out = wrongbook(&["init-db", "-c", &config, "--load", &path("dims.sql")]);
    assert!(out.status.success(), "{}", text(&out));
    let out = wrongbook(&[
        "replay",
        "-c",
        &config,
        "--input",
        &path("a.jsonl"),
        "-w",
        "2",
        "--quiet",
        "--dims-after",
        &path("change.sql"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("processed 3000 events"), "{summary}");
    assert!(summary.contains("dead letters by reason"), "{summary}");
    assert!(std::path::Path::new(&path("a.dead-letters.jsonl")).exists());
}

/// The JSON report of `bench --events 20000 -w 2` with `options`.
fn bench_json(options: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--log", "warn", "bench", "--events", "20000", "-w", "2", "--json",
    ];
    args.extend_from_slice(options);
    let out = wrongbook(&args);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn bench_reports_every_figure_as_json() {
    let report = bench_json(&["--rename-share", "0.5"]);
    assert_eq!(report["events"], 20_000);
    assert_eq!(report["workers"], 2);
    assert_eq!(report["stages"].as_array().unwrap().len(), 7);
    assert!(report["events_per_second"].as_f64().unwrap() > 0.0);
    let cpu = report["cpu_seconds"].as_f64().expect("CPU time on Linux");
    assert!(cpu > 0.0, "the run used CPU: {cpu}");
    let per_cpu = report["events_per_cpu_second"].as_f64().unwrap();
    assert!(
        (per_cpu * cpu - 20_000.0).abs() < 1.0,
        "{per_cpu} events per CPU-second"
    );
    // Each role's threads are counted once, by their own clocks: their sum is within what the
    // whole process used, and the workers, which parse every event, used some of it.
    let by_thread = &report["cpu_seconds_by_thread"];
    let seconds = |role: &str| by_thread[role].as_f64().expect("a figure per role");
    assert!(seconds("workers") > 0.0, "{by_thread}");
    assert!(seconds("source") > 0.0, "{by_thread}");
    assert!(
        seconds("workers") + seconds("source") + seconds("sinks") <= cpu + 0.05,
        "{by_thread} within {cpu}"
    );
    let live = report["live_records"].as_i64().unwrap();
    assert!(live > 5_000, "{live}");
    assert!(report["rows_upserted"].as_u64().unwrap() as i64 >= live);
    assert!(report["state_bytes_per_live_record"].as_f64().unwrap() > 50.0);
    let change = &report["dim_change"];
    assert!(change["rows_corrected"].as_u64().unwrap() > 0, "{change}");

    // Which build and machine the figures come from, to compare reports across both.
    let build = &report["build"];
    assert_eq!(build["version"], env!("CARGO_PKG_VERSION"), "{build}");
    assert_eq!(build["commit"], built_commit(), "{build}");
    // The test and the binary are built in one profile.
    assert_eq!(build["optimized"], !cfg!(debug_assertions), "{build}");
    let machine = &report["machine"];
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(machine["kernel"], kernel.trim(), "{machine}");
    assert!(
        machine["cpu"].is_null() || machine["cpu"].as_str().is_some_and(|cpu| !cpu.is_empty()),
        "{machine}"
    );
}

/// The commit the binary should report: `HEAD` of this checkout, `-dirty` when its code has
/// changes not committed, or `unknown` outside a checkout.
fn built_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let code = ["src", "Cargo.toml", "Cargo.lock", "build.rs"];
    let status = [
        &["status", "--porcelain", "--untracked-files=no", "--"][..],
        &code,
    ]
    .concat();
    match git(&status).is_some_and(|changes| !changes.is_empty()) {
        true => format!("{commit}-dirty"),
        false => commit,
    }
}

#[test]
fn the_version_names_the_commit_it_was_built_from() {
    let out = wrongbook(&["--version"]);
    assert!(out.status.success(), "{}", text(&out));
    let version = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        version.trim(),
        format!(
            "wrongbook {} ({})",
            env!("CARGO_PKG_VERSION"),
            built_commit()
        )
    );
}

#[test]
fn bench_measures_scaling_in_alternating_passes_over_every_event() {
    let report = bench_json(&["--sink", "none", "--scaling-rounds", "2"]);
    let scaling = &report["scaling"];
    assert_eq!(scaling["workers"], 2, "{scaling}");
    let passes = scaling["passes"].as_array().expect("the passes");
    // Each round runs one worker, two, and two independent one-worker engines at once, the
    // first taking turns; the independent engines share the events between them.
    let kind = |p: &serde_json::Value| {
        (
            p["round"].as_u64().unwrap(),
            p["workers"].as_u64().unwrap(),
            p["copies"].as_u64().unwrap(),
        )
    };
    let order: Vec<(u64, u64, u64)> = passes.iter().map(kind).collect();
    assert_eq!(
        order,
        [
            (1, 1, 1),
            (1, 2, 1),
            (1, 1, 2),
            (2, 2, 1),
            (2, 1, 2),
            (2, 1, 1)
        ]
    );
    for pass in passes {
        assert_eq!(pass["events"], 20_000, "{pass}");
        assert!(pass["events_per_second"].as_f64().unwrap() > 0.0, "{pass}");
        assert!(pass["cpu_seconds_by_thread"]["workers"].as_f64().unwrap() > 0.0);
    }
    let rate = |round: u64, workers: u64, copies: u64| {
        passes
            .iter()
            .find(|p| kind(p) == (round, workers, copies))
            .and_then(|p| p["events_per_second"].as_f64())
            .unwrap()
    };
    for (field, of, over) in [
        ("round_ratios", (2, 1), (1, 1)),
        ("independent_round_ratios", (1, 2), (1, 1)),
        ("workers_of_independent_round_ratios", (2, 1), (1, 2)),
    ] {
        let ratios = scaling[field].as_array().unwrap();
        assert_eq!(ratios.len(), 2, "{field}");
        for (round, ratio) in (1..=2).zip(ratios) {
            let expected = rate(round, of.0, of.1) / rate(round, over.0, over.1);
            assert!(
                (ratio.as_f64().unwrap() - expected).abs() < 1e-9,
                "{field}: {scaling}"
            );
        }
    }
    let share = scaling["one_worker_helper_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");

    // The table says it too; and one worker has nothing to compare with.
    let out = wrongbook(&[
        "--log",
        "warn",
        "bench",
        "--events",
        "5000",
        "-w",
        "2",
        "--sink",
        "none",
        "--scaling-rounds",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("ratio of the medians"), "{table}");
    assert!(table.contains("independent 1-worker engines"), "{table}");
    let build = format!(
        "wrongbook {} ({})",
        env!("CARGO_PKG_VERSION"),
        built_commit()
    );
    assert!(table.contains(&build), "{table}");
    // Figures of a debug build say little, and the table says so.
    let warned = table.contains("warning: an unoptimized (debug) build");
    assert_eq!(warned, cfg!(debug_assertions), "{table}");
    let out = wrongbook(&["bench", "--events", "5000", "--scaling-rounds", "1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--workers 2 or more"), "{}", text(&out));
}

/// The scratch directories of benches under `tmp`.
fn bench_scratch_dirs(tmp: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("wrongbook-bench-"))
        .collect()
}

#[test]
fn a_bench_that_fails_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let config = dir.path().join("bench.toml");
    // The database cannot be opened: the bench fails after it has generated its events.
    std::fs::write(
        &config,
        "[mysql]\nurl = \"sqlite:///no/such/directory/bench.db\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wrongbook"))
        .args(["--log", "warn", "bench", "--events", "2000", "--sink", "db"])
        .arg("-c")
        .arg(&config)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("generating 2000 events"),
        "{}",
        text(&out)
    );
    assert_eq!(bench_scratch_dirs(&tmp), Vec::<String>::new());
}

/// Starts `wrongbook bench ARGS` with its temporary files under `tmp`, stderr piped for
/// [`interrupt`].
fn spawn_bench(args: &[&OsStr], tmp: &std::path::Path) -> common::job::Job {
    let child = Command::new(env!("CARGO_BIN_EXE_wrongbook"))
        .args(["--log", "warn", "bench"])
        .args(args)
        .env("TMPDIR", tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::job::Job(Some(child))
}

/// Sends a running bench SIGINT, checks that it exits as a process the signal ended (130), and
/// returns what it wrote to stderr (piped).
fn interrupt(mut bench: common::job::Job) -> String {
    let mut stderr_pipe = bench.child().stderr.take().unwrap();
    let status = common::job::stop_with(bench, "INT");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut stderr_pipe, &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    stderr
}

#[test]
fn an_interrupted_bench_removes_its_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut bench = spawn_bench(
        &["--events", "5000000", "--sink", "none"].map(OsStr::new),
        dir.path(),
    );
    let pid = bench.child().id();
    let events = dir
        .path()
        .join(format!("wrongbook-bench-{pid}"))
        .join("bench-events.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::metadata(&events).is_ok_and(|m| m.len() > 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "no events generated within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stderr = interrupt(bench);
    assert!(
        stderr.contains("interrupted: removed the bench's temporary files"),
        "{stderr}"
    );
    assert_eq!(bench_scratch_dirs(dir.path()), Vec::<String>::new());
}

#[test]
fn an_interrupted_bench_into_a_database_drops_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!("[mysql]\nurl = \"sqlite://{}\"\n", db.display()),
    )
    .unwrap();
    let mut bench = spawn_bench(
        &[
            OsStr::new("--events"),
            OsStr::new("300000"),
            OsStr::new("--sink"),
            OsStr::new("db"),
            OsStr::new("-c"),
            config.as_os_str(),
            OsStr::new("--no-db-limit"),
        ],
        dir.path(),
    );
    let table = "dwd_wrong_record_wide_delta_bench";
    let tables_named = |name: &str| -> i64 {
        let Ok(db) = rusqlite::Connection::open(&db) else {
            return 0;
        };
        db.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |row| row.get(0),
        )
        .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while tables_named(table) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bench made no table within 120 s"
        );
        assert!(
            bench.child().try_wait().unwrap().is_none(),
            "the bench ended before its table was seen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stderr = interrupt(bench);
    assert!(
        stderr.contains(&format!("interrupted: dropped the bench's table {table}")),
        "{stderr}"
    );
    assert_eq!(tables_named(table), 0, "{stderr}");
    assert_eq!(bench_scratch_dirs(dir.path()), Vec::<String>::new());
}

#[test]
fn bench_into_mariadb_measures_the_database_limit_beside_the_jobs_table() {
    let Some(db) = common::TestDatabase::mariadb() else {
        return;
    };
    let job_table = "dwd_wrong_record_wide_delta";
    db.connect()
        .execute_script(&format!(
            "{}INSERT INTO {job_table} (id, wrong_id, user_id, question_id, collect_time, \
             event_id, event_type, process_time) VALUES (424242, 'mine', 'u', 'q', \
             '2024-01-01 00:00:00', 'e', 'wrongbook_add', '2024-01-01 00:00:00');",
            wrongbook::schema::wide_table_ddl(wrongbook::schema::Dialect::Mysql, job_table)
        ))
        .unwrap();
    let config = db.dir().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[mysql]\nurl = \"{}\"\nusername = \"root\"\n",
            db.config.mysql.url
        ),
    )
    .unwrap();
    let out = wrongbook(&[
        "--log",
        "warn",
        "bench",
        "--events",
        "20000",
        "--sink",
        "db",
        "-c",
        config.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let limit = &report["db_limit"];
    assert_eq!(limit["limit"]["rows"], report["live_records"], "{limit}");
    for figure in ["one_connection", "two_connections"] {
        assert!(limit["limit"][figure].as_f64().unwrap() > 0.0, "{limit}");
    }
    assert!(limit["share_of_limit"].as_f64().unwrap() > 0.0, "{limit}");

    // The job's own table is untouched, and the bench's tables are gone.
    let mine = db.read_table(job_table);
    assert_eq!(mine.keys().copied().collect::<Vec<_>>(), vec![424242]);
    let tables = db.connect().query("SHOW TABLES").unwrap();
    let names: Vec<String> = tables
        .rows
        .into_iter()
        .filter_map(|row| row.into_iter().next()?.into_text())
        .collect();
    assert_eq!(names, vec![job_table.to_owned()]);
}
