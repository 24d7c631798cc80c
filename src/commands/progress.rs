//! A progress bar for long runs: bytes read of the input (when its size is known), events/s and
//! rows written, refreshed a few times a second on stderr (hidden when stderr is not a
//! terminal).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sink::SinkStats;
use crate::source::file::SourceProgress;

/// A progress bar over the input's bytes, with events/s and rows written.
pub struct ProgressDisplay {
    bar: indicatif::ProgressBar,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ProgressDisplay {
    pub fn start(source: Arc<SourceProgress>, sink: Arc<SinkStats>) -> ProgressDisplay {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
            )
            .expect("a valid progress template"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (bar, stop) = (bar.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    bar.set_length(source.total_bytes.load(Ordering::Relaxed));
                    bar.set_position(source.bytes.load(Ordering::Relaxed));
                    let messages = source.messages.load(Ordering::Relaxed);
                    let rate = messages as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!(
                        "{messages} events, {rate:.0}/s, {} rows written",
                        sink.rows_upserted.load(Ordering::Relaxed)
                    ));
                    // Parked, not asleep: `finish` wakes it, so the end of a run never waits
                    // for the next refresh.
                    std::thread::park_timeout(Duration::from_millis(200));
                }
            })
        };
        ProgressDisplay { bar, stop, thread }
    }

    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        let _ = self.thread.join();
        self.bar.finish_and_clear();
    }
}

/// Runs `pipeline`, with a progress bar when `show` is set.
pub fn run_with_progress(
    pipeline: crate::engine::Pipeline,
    show: bool,
) -> Result<crate::engine::RunSummary, crate::engine::EngineError> {
    let progress = show.then(|| {
        ProgressDisplay::start(
            pipeline.source_progress.clone(),
            pipeline.sink_stats.clone(),
        )
    });
    let result = crate::engine::run_pipeline(pipeline);
    if let Some(progress) = progress {
        progress.finish();
    }
    result
}
