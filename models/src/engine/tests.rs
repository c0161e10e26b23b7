//! The engine's queue with a tiny network (2 filters, 2 levels, 2 classes): interactive jobs
//! between background windows, priority order, cancel between windows, a full queue refused.
//! Every check reads the engine's own record ([`JobRecord`], the background-window counter),
//! never a clock.

use super::*;
use crate::network::{weights, SegResNetConfig};
use ferrolabel_imaging::Volume;
use std::time::{Duration, Instant};

/// An engine on a bundle with seeded random weights of a tiny network.
fn tiny_engine(queue_limit: usize) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let network = SegResNetConfig {
        in_channels: 1,
        out_channels: 2,
        init_filters: 2,
        blocks_down: vec![1, 1],
        blocks_up: vec![1],
        dropout_prob: Some(0.2),
        norm_groups: 1,
    };
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    weights::write_random(&network, 7, &dir.path().join("models/model.pt")).unwrap();
    let bundle = Bundle {
        root: dir.path().to_path_buf(),
        network,
        labels: vec!["background".into(), "thing".into()],
        default_highres: true,
        sw_overlap: 0.25,
        sw_batch_size: 1,
        version: "0".into(),
        description: "tiny test network".into(),
    };
    let opts = EngineOptions {
        device: Device::Cpu,
        threads: None,
        amp: false,
        precision: crate::device::Precision::Fp32,
        queue_limit,
    };
    (dir, Engine::start(bundle, opts).unwrap())
}

/// A `nx` x 16 x 16 image at the high-resolution spacing (1.5 mm, RAS): with overlap 0.9 a
/// 96-voxel window steps 9 voxels, so `nx = 150` makes 7 windows and `nx = 16` one.
fn volume(nx: usize) -> Arc<Volume> {
    let dims = [nx, 16, 16];
    let data = (0..nx * 256)
        .map(|n| (n % 37) as f32 * 10.0 - 100.0)
        .collect();
    let mut affine = [[0.0; 4]; 4];
    for (i, row) in affine.iter_mut().enumerate() {
        row[i] = if i < 3 { 1.5 } else { 1.0 };
    }
    Arc::new(Volume::new(dims, data, affine).unwrap())
}

const BIG: usize = 150;
const BIG_WINDOWS: usize = 7;
const SMALL: usize = 16;

fn request(nx: usize, priority: Priority, cancel: &Arc<AtomicBool>) -> InferRequest {
    InferRequest {
        volume: volume(nx),
        resolution: Resolution::High,
        sw_overlap: Some(0.9),
        sw_batch_size: Some(1),
        precision: None,
        priority,
        cancel: cancel.clone(),
    }
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Waits for a state of the engine (a generous deadline only guards against a hang).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "waited too long for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn answer<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.blocking_recv().expect("engine answered")
}

#[test]
fn an_interactive_job_waits_at_most_one_background_window() {
    let (_dir, engine) = tiny_engine(8);
    // a try is conclusive when the interactive job was queued with two or more background
    // windows to go (a first-in-first-out engine would then make it wait for all of them)
    for _ in 0..5 {
        let before = engine.status().background_windows;
        let bg = engine
            .submit(request(BIG, Priority::Background, &flag()))
            .unwrap();
        wait_until("the background job's first window", || {
            engine.status().background_windows > before
        });
        let fg = engine
            .infer_blocking(request(SMALL, Priority::Interactive, &flag()))
            .unwrap();
        let bg = answer(bg).unwrap();
        let (i, b) = (fg.engine, bg.engine);
        assert_eq!(bg.windows, BIG_WINDOWS);
        assert_eq!(b.finished_at - b.started_at, BIG_WINDOWS as u64, "{b:?}");
        assert_eq!(b.waited_windows, 0);
        assert!(!b.between_windows);
        // whenever it arrived, at most one background window ran before it
        assert!(i.waited_windows <= 1, "interactive {i:?}, background {b:?}");
        if i.background_windows_left < 2 {
            continue;
        }
        assert_eq!(i.waited_windows, i.started_at - i.queued_at);
        assert!(i.between_windows, "{i:?}");
        assert!(b.started_at <= i.queued_at && i.started_at < b.finished_at);
        assert!(i.order > b.order);
        // the interactive job's own windows are not background windows
        assert_eq!(i.finished_at, i.started_at);
        return;
    }
    panic!("no interactive job was queued with two background windows left");
}

#[test]
fn queued_interactive_jobs_run_before_queued_background_jobs() {
    let (_dir, engine) = tiny_engine(8);
    // an interactive job keeps the engine busy (interactive jobs are not interrupted)
    let first = engine
        .submit(request(BIG, Priority::Interactive, &flag()))
        .unwrap();
    wait_until("the first job to start", || engine.status().running == 1);
    let b1 = engine
        .submit(request(SMALL, Priority::Background, &flag()))
        .unwrap();
    let b2 = engine
        .submit(request(SMALL, Priority::Background, &flag()))
        .unwrap();
    let i1 = engine
        .submit(request(SMALL, Priority::Interactive, &flag()))
        .unwrap();
    let i2 = engine
        .submit(request(SMALL, Priority::Interactive, &flag()))
        .unwrap();
    assert_eq!(engine.status().queued, 4);
    let order: Vec<u64> = [first, i1, i2, b1, b2]
        .into_iter()
        .map(|rx| answer(rx).unwrap().engine.order)
        .collect();
    assert_eq!(
        order,
        [1, 2, 3, 4, 5],
        "first, i1, i2, b1, b2 ran as {order:?}"
    );
    let s = engine.status();
    assert_eq!((s.queued, s.running, s.completed), (0, 0, 5));
    // background windows: one per small background job
    assert_eq!(s.background_windows, 2);
}

#[test]
fn a_cancelled_job_stops_at_the_next_window() {
    let (_dir, engine) = tiny_engine(8);
    // cancelled before it starts: no window runs
    let cancel = flag();
    cancel.store(true, Ordering::SeqCst);
    let rx = engine
        .submit(request(BIG, Priority::Background, &cancel))
        .unwrap();
    assert!(matches!(answer(rx), Err(ModelsError::Cancelled)));
    assert_eq!(engine.status().background_windows, 0);

    // cancelled after its first window: it stops after at most one more
    let cancel = flag();
    let rx = engine
        .submit(request(BIG, Priority::Background, &cancel))
        .unwrap();
    wait_until("the first window", || {
        engine.status().background_windows >= 1
    });
    cancel.store(true, Ordering::SeqCst);
    let at_cancel = engine.status().background_windows;
    assert!(matches!(answer(rx), Err(ModelsError::Cancelled)));
    let after = engine.status().background_windows;
    assert!(
        after <= at_cancel + 1 && (after as usize) < BIG_WINDOWS,
        "cancelled at window {at_cancel}, stopped after {after} of {BIG_WINDOWS}"
    );

    // the engine goes on with the next job
    let seg = engine
        .infer_blocking(request(SMALL, Priority::Background, &flag()))
        .unwrap();
    assert_eq!(seg.engine.finished_at - seg.engine.started_at, 1);
    assert_eq!(seg.labels.len(), SMALL * 16 * 16);
}

#[test]
fn a_full_queue_is_refused_at_once() {
    let (_dir, engine) = tiny_engine(2);
    let busy = engine
        .submit(request(BIG, Priority::Interactive, &flag()))
        .unwrap();
    wait_until("the first job to start", || engine.status().running == 1);
    let a = engine
        .submit(request(SMALL, Priority::Background, &flag()))
        .unwrap();
    let b = engine
        .submit(request(SMALL, Priority::Interactive, &flag()))
        .unwrap();
    for priority in [Priority::Interactive, Priority::Background] {
        match engine.submit(request(SMALL, priority, &flag())) {
            Err(ModelsError::QueueFull { waiting, limit }) => assert_eq!((waiting, limit), (2, 2)),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a third waiting job was accepted"),
        }
    }
    assert_eq!(engine.status().queued, 2);
    for rx in [busy, a, b] {
        answer(rx).unwrap();
    }
    // room again once the queue drained
    engine
        .infer_blocking(request(SMALL, Priority::Background, &flag()))
        .unwrap();
    engine.shutdown();
    assert!(matches!(
        engine.submit(request(SMALL, Priority::Interactive, &flag())),
        Err(ModelsError::Unavailable(_))
    ));
}

/// A volume whose data no longer fits its grid (its fields are public): libtorch refuses to
/// view 100 values as the grid, and tch's `view` panics on that error.
fn broken(priority: Priority) -> InferRequest {
    let mut v = (*volume(SMALL)).clone();
    v.data.truncate(100);
    InferRequest {
        volume: Arc::new(v),
        ..request(SMALL, priority, &flag())
    }
}

fn assert_panicked(r: Result<Segmentation>) {
    match r {
        Err(ModelsError::Panicked(msg)) => {
            assert!(msg.contains("invalid for input of size 100"), "{msg}")
        }
        Err(e) => panic!("not a panic: {e}"),
        Ok(_) => panic!("the broken job succeeded"),
    }
}

#[test]
fn a_panicking_job_fails_alone_and_the_engine_serves_the_next() {
    let (_dir, engine) = tiny_engine(8);
    assert_panicked(engine.infer_blocking(broken(Priority::Interactive)));
    let seg = engine
        .infer_blocking(request(SMALL, Priority::Interactive, &flag()))
        .unwrap();
    assert_eq!(seg.labels.len(), SMALL * 16 * 16);
    // between two windows of a background job: it fails alone, the background job finishes
    let before = engine.status().background_windows;
    let bg = engine
        .submit(request(BIG, Priority::Background, &flag()))
        .unwrap();
    wait_until("the background job's first window", || {
        engine.status().background_windows > before
    });
    assert_panicked(engine.infer_blocking(broken(Priority::Interactive)));
    assert_eq!(answer(bg).unwrap().labels.len(), BIG * 16 * 16);
    engine
        .infer_blocking(request(SMALL, Priority::Background, &flag()))
        .unwrap();
    let st = engine.status();
    assert_eq!((st.running, st.queued, st.completed), (0, 0, 5));
}
