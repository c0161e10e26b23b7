//! The scheduler's runner on a real SQLite datastore, with periodic jobs as the work (no
//! network weights needed): a job that panics fails alone — the runner keeps claiming and
//! running the others — and periodic jobs come back at their interval.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolabel_apps::jobs::{PeriodicFn, Scheduler, SchedulerOptions};
use ferrolabel_apps::{AppOptions, WholeBodyApp};
use ferrolabel_datastore::{Datastore, DatastoreOptions, JobState};
use serde_json::json;

fn app() -> Arc<WholeBodyApp> {
    let app_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wholebody");
    Arc::new(
        WholeBodyApp::open(AppOptions {
            app_dir,
            conf: Default::default(),
            engine: Default::default(),
            device_names: vec!["cpu".into()],
            limits: Default::default(),
            strategies_enabled: true,
            server_version: "test".into(),
        })
        .expect("the bundle's configs open"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_fails_alone_and_periodic_jobs_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open(dir.path(), DatastoreOptions::default())
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let counting: PeriodicFn = Arc::new(move || {
        let c = counter.clone();
        Box::pin(async move { Ok(json!({"run": c.fetch_add(1, Ordering::SeqCst) + 1})) })
    });
    let panicking: PeriodicFn = Arc::new(|| Box::pin(async { panic!("boom in a job") }));
    let every = Duration::from_millis(100);
    let jobs = Scheduler::start(
        app(),
        ds.clone(),
        SchedulerOptions {
            lease: Duration::from_secs(2),
            max_running: 2,
            ..SchedulerOptions::default()
        },
        vec![
            ("panics".into(), every, panicking),
            ("counts".into(), every, counting),
        ],
    )
    .await
    .unwrap();

    // the counting job keeps coming back while its neighbour panics every time
    let t0 = Instant::now();
    while runs.load(Ordering::SeqCst) < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the periodic job ran {} times",
            runs.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = ds.list_jobs(Some("periodic"), 10).await.unwrap();
    let panics = rows.iter().find(|r| r.id == "periodic:panics").unwrap();
    assert!(
        panics
            .error
            .as_deref()
            .is_some_and(|e| e.contains("the job panicked: boom in a job")),
        "{panics:?}"
    );
    assert!(panics.history.as_array().unwrap().len() >= 2, "{panics:?}");
    let counts = rows.iter().find(|r| r.id == "periodic:counts").unwrap();
    assert!(counts.error.is_none(), "{counts:?}");

    // the views show them, and shutting down ends the runner
    let all = jobs.list(Some("periodic"), None).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|t| t["every_s"] == 0.1), "{all:?}");
    jobs.shutdown().await;
    let after = runs.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        after,
        "a job ran after the shutdown"
    );
    let left = ds.list_jobs(Some("periodic"), 10).await.unwrap();
    assert!(
        left.iter()
            .all(|r| r.lease_owner.is_none() || r.state != JobState::Running),
        "{left:?}"
    );
}
