//! The periodic dimension refresh when the database misbehaves: a snapshot query that fails keeps
//! the last good snapshot, is retried with backoff and raises one alert per failing episode;
//! once the table is readable again, only the difference is sent on.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::TestDatabase;
use wrongbook::commands::gen::{dims_sql, generate, GenOptions};
use wrongbook::commands::init_db::init_db;
use wrongbook::sink::dead_letters::{DeadLetterMemory, NoticeKind};
use wrongbook::source::dims::{DimRefresher, DimSnapshot, DimStats, DimTable};

#[test]
fn a_failing_refresh_keeps_the_last_snapshot_alerts_once_and_recovers() {
    let db = TestDatabase::sqlite();
    let generated = generate(&GenOptions {
        events: 200,
        ..GenOptions::default()
    });
    let mut conn = init_db(&db.config, None).unwrap();
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    let mut dims = db.config.load_spec().unwrap().dimensions;
    dims.pattern.refresh_interval = Duration::from_millis(100);
    let snapshot = DimSnapshot::read(&mut conn, &dims).unwrap();

    let (updates_tx, updates) = crossbeam_channel::unbounded();
    let notices = Arc::new(DeadLetterMemory::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(DimStats::default());
    stats.loaded(&snapshot, &dims);
    let refresher = DimRefresher {
        settings: db.config.database(),
        dims: dims.clone(),
        snapshot,
        updates: updates_tx,
        notices: notices.clone(),
        stop: stop.clone(),
        stats: stats.clone(),
    }
    .spawn()
    .unwrap();

    // The pattern table disappears for a while: several failed reads, one alert.
    conn.execute_script("ALTER TABLE tower_pattern RENAME TO tower_pattern_away")
        .unwrap();
    let failures = || stats.tables.lock().unwrap()[&DimTable::Pattern].failures;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while failures() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh did not retry"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        updates.is_empty(),
        "nothing is sent while the table cannot be read"
    );
    let alerts: Vec<_> = notices
        .notices()
        .into_iter()
        .filter(|n| n.kind == NoticeKind::Alert)
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].reason, "dimension_refresh_failed");
    assert!(stats.tables.lock().unwrap()[&DimTable::Pattern]
        .last_error
        .is_some());

    // Back, with one pattern renamed: exactly that difference arrives.
    conn.execute_script(
        "ALTER TABLE tower_pattern_away RENAME TO tower_pattern;
         UPDATE tower_pattern SET name = 'renamed' WHERE id = 'pattern_0';",
    )
    .unwrap();
    let diff = updates
        .recv_timeout(Duration::from_secs(20))
        .expect("the change after recovery");
    assert_eq!(diff.patterns.len(), 2, "{diff:?}");
    assert!(diff
        .patterns
        .iter()
        .any(|(row, d)| *d == 1 && row.name.as_deref() == Some("renamed")));
    assert!(diff.teaching_type_pts.is_empty() && diff.teaching_types.is_empty());
    assert!(stats.tables.lock().unwrap()[&DimTable::Pattern]
        .last_error
        .is_none());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    refresher.join().unwrap();
}
