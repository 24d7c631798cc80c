//! The `wrongbook` binary: parses the command line, sets up logging, calls the library, and
//! maps errors to a message and a non-zero exit code.

mod cli;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use cli::{BenchSinkArg, Cli, Command, LogFormat};
use wrongbook::commands::{bench, demo, gen, init_db, replay, run};
use wrongbook::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// The configuration with the command line's cluster options applied (they win).
fn with_cluster(mut config: Config, args: &cli::ClusterArgs) -> anyhow::Result<Config> {
    if let Some(processes) = args.processes {
        config.cluster.processes = processes;
    }
    if let Some(process) = args.process {
        config.cluster.process = process;
    }
    if let Some(hostfile) = &args.hostfile {
        // Relative to where the command runs, not to the config file.
        let absolute = std::env::current_dir()
            .context("cannot read the current directory")?
            .join(hostfile);
        config.cluster.hostfile = absolute.display().to_string();
    }
    config.validate()?;
    Ok(config)
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo {
            dir,
            events,
            workers,
            seed,
            partitions,
        } => {
            let text = demo::demo(&demo::DemoOptions {
                dir,
                events,
                workers,
                seed,
                partitions,
            })?;
            print!("{text}");
        }
        Command::InitDb {
            config,
            table,
            load,
        } => {
            let config = load_config(config.as_deref())?;
            let mut db = init_db::init_db(&config, table.as_deref())?;
            println!("tables ready in {}", db.target());
            for path in load {
                let sql = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                db.execute_script(&sql)
                    .with_context(|| format!("loading {}", path.display()))?;
                println!("loaded {}", path.display());
            }
        }
        Command::Replay {
            cluster,
            config,
            input,
            from,
            to,
            workers,
            dead_letters,
            dims_after,
            table,
            dry_run,
            quiet,
        } => {
            let config = with_cluster(load_config(config.as_deref())?, &cluster)?;
            let summary = match (input, from) {
                (Some(input), _) => replay::replay(
                    &config,
                    &replay::ReplayOptions {
                        input,
                        workers,
                        dead_letters,
                        dims_after,
                        table,
                        dry_run,
                        progress: !quiet,
                    },
                )?,
                (None, Some(from)) => {
                    anyhow::ensure!(
                        dims_after.is_none() && !dry_run,
                        "--dims-after and --dry-run go with --input"
                    );
                    replay::replay_topic(
                        &config,
                        &replay::TopicReplayOptions {
                            from: replay::TimePoint::parse(&from).map_err(anyhow::Error::msg)?,
                            to: replay::TimePoint::parse(&to).map_err(anyhow::Error::msg)?,
                            workers,
                            table,
                            dead_letters: dead_letters
                                .unwrap_or_else(|| "wrongbook-replay.dead-letters.jsonl".into()),
                            progress: !quiet,
                        },
                    )?
                }
                (None, None) => anyhow::bail!("replay needs --input FILE or --from"),
            };
            print!("{}", replay::format_summary(&summary));
        }
        Command::Run {
            cluster,
            config,
            workers,
            until_caught_up,
            from_scratch,
            progress_seconds,
        } => {
            let config = with_cluster(load_config(config.as_deref())?, &cluster)?;
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(signal, stop.clone())
                    .context("cannot install the signal handlers")?;
            }
            let summary = run::run(
                &config,
                &run::RunOptions {
                    workers,
                    until_caught_up,
                    stop,
                    progress_interval: std::time::Duration::from_secs(progress_seconds.max(1)),
                    from_scratch,
                    on_serving: None,
                },
            )?;
            print!("{}", replay::format_summary(&summary));
        }
        Command::Bench {
            events,
            seed,
            workers,
            patterns,
            teaching_types,
            max_fixes,
            delete_share,
            bad_share,
            duplicate_share,
            sink,
            config,
            rename_share,
            no_db_limit,
            scaling_rounds,
            json,
        } => {
            for (name, share) in [
                ("--delete-share", delete_share),
                ("--bad-share", bad_share),
                ("--duplicate-share", duplicate_share),
                ("--rename-share", rename_share),
            ] {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&share),
                    "{name} is a share between 0 and 1"
                );
            }
            anyhow::ensure!(workers > 0, "--workers must be at least 1");
            anyhow::ensure!(
                scaling_rounds == 0 || workers >= 2,
                "--scaling-rounds compares 1 worker with --workers: give --workers 2 or more"
            );
            let sink = match sink {
                BenchSinkArg::Memory => bench::BenchSink::Memory,
                BenchSinkArg::None => bench::BenchSink::None,
                BenchSinkArg::Db => {
                    let path = config
                        .as_deref()
                        .context("--sink db needs --config naming the database")?;
                    bench::BenchSink::Database(Box::new(load_config(Some(path))?))
                }
            };
            bench::clean_up_on_interrupt().context("cannot install the signal handlers")?;
            let report = bench::bench(&bench::BenchOptions {
                gen: gen::GenOptions {
                    events,
                    seed,
                    bad_share,
                    duplicate_share,
                    patterns: patterns.max(1),
                    teaching_types: teaching_types.max(1),
                    max_fixes,
                    delete_share,
                    ..gen::GenOptions::default()
                },
                workers,
                sink,
                rename_share,
                engine: wrongbook::config::EngineConfig::default(),
                progress: !json,
                db_limit: !no_db_limit,
                scaling_rounds,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", bench::format_report(&report));
            }
        }
        Command::Gen {
            events,
            seed,
            bad_share,
            duplicate_share,
            patterns,
            out,
            dims_out,
            dims_change_out,
            routing_table,
            to_kafka,
            config,
            partitions,
            rate,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&bad_share) && (0.0..=1.0).contains(&duplicate_share),
                "--bad-share and --duplicate-share are shares between 0 and 1"
            );
            anyhow::ensure!(
                wrongbook::config::is_identifier(&routing_table),
                "--routing-table `{routing_table}` is not a plain SQL table name"
            );
            let opts = gen::GenOptions {
                events,
                seed,
                bad_share,
                duplicate_share,
                patterns: patterns.max(1),
                ..gen::GenOptions::default()
            };
            if to_kafka {
                let config = load_config(config.as_deref())?;
                for topic in [&config.kafka.topic, &config.kafka.alerts_topic] {
                    wrongbook::source::kafka::ensure_topic(
                        &config.kafka,
                        topic,
                        partitions.max(1),
                    )?;
                }
                let (sent, _, _) = gen::produce_to_kafka(&config.kafka, &opts, Some(rate))
                    .map_err(anyhow::Error::msg)?;
                eprintln!(
                    "produced {sent} events to {} at {}",
                    config.kafka.topic, config.kafka.bootstrap_servers
                );
                return Ok(());
            }
            let generated = gen::generate(&opts);
            if out.as_os_str() == "-" {
                let stdout = std::io::stdout();
                let mut lock = std::io::BufWriter::new(stdout.lock());
                gen::write_jsonl(&mut lock, &generated.messages)?;
                lock.flush()?;
            } else {
                let file = std::fs::File::create(&out)
                    .with_context(|| format!("cannot create {}", out.display()))?;
                let mut writer = gen::BlockWriter::new(file);
                gen::write_jsonl(&mut writer, &generated.messages)
                    .and_then(|_| writer.flush())
                    .with_context(|| format!("cannot write {}", out.display()))?;
                eprintln!(
                    "wrote {} events to {}",
                    generated.messages.len(),
                    out.display()
                );
            }
            if let Some(path) = dims_out {
                let sql = format!(
                    "{}{}",
                    gen::dims_sql(&generated.dims),
                    gen::routing_sql(&routing_table)
                );
                std::fs::write(&path, sql)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if let Some(path) = dims_change_out {
                std::fs::write(&path, gen::dims_sql(&generated.dims_changed))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
    }
    Ok(())
}
