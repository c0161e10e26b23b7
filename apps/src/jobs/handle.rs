//! [`JobHandle`]: what a running job's code sees — its id and attempt, a log, progress, a
//! checkpoint that survives a restart, and the cancel flag.
//!
//! Every method is synchronous and cheap (a mutex held for a few field writes), so job code on
//! the blocking pool or a monitor thread can call it as freely as async code. The runner flushes
//! what changed to the `jobs` table at every heartbeat and once more when the job ends, so the
//! job never waits for the database; a process killed in between loses at most one heartbeat
//! interval of progress, which is why resumable work checks its own outputs (a batch asks the
//! datastore whether an image's label from this job exists) rather than trusting the checkpoint
//! alone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

/// Log lines kept per job (the protocol's rolling `details` window).
pub const MAX_DETAILS: usize = 20;

/// The mutable part of a running job, shared by its handle, its heartbeat and the views.
#[derive(Debug, Default)]
pub(crate) struct LiveState {
    pub(crate) details: VecDeque<String>,
    pub(crate) progress: Option<Value>,
    pub(crate) checkpoint: Option<Value>,
    /// Something changed since the last flush.
    pub(crate) dirty: bool,
}

/// A job running in this process.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) attempt: i64,
    /// `progress.done` when this attempt started (work of earlier attempts), so the pace of
    /// this attempt is measured on its own work.
    pub(crate) start_done: f64,
    pub(crate) cancel: Arc<AtomicBool>,
    /// A stop was requested (`DELETE`), as opposed to a shutdown or a lost lease.
    pub(crate) stopped: AtomicBool,
    pub(crate) state: Mutex<LiveState>,
}

impl Live {
    pub(crate) fn new(
        id: String,
        kind: String,
        attempt: i64,
        details: Vec<String>,
        progress: Option<Value>,
        checkpoint: Option<Value>,
    ) -> Live {
        let mut d: VecDeque<String> = details.into();
        while d.len() > MAX_DETAILS {
            d.pop_front();
        }
        let start_done = progress
            .as_ref()
            .and_then(|p| p.get("done")?.as_f64())
            .unwrap_or(0.0);
        Live {
            id,
            kind,
            attempt,
            start_done,
            cancel: Arc::new(AtomicBool::new(false)),
            stopped: AtomicBool::new(false),
            state: Mutex::new(LiveState {
                details: d,
                progress,
                checkpoint,
                dirty: false,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LiveState> {
        // a panic while holding the lock leaves plain fields behind: keep going
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a requested stop and sets the cancel flag.
    pub(crate) fn request_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub(crate) fn log(&self, line: String) {
        let mut s = self.lock();
        if s.details.len() == MAX_DETAILS {
            s.details.pop_front();
        }
        s.details.push_back(line);
        s.dirty = true;
    }
}

/// The running job's side of the scheduler; cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct JobHandle {
    pub(crate) live: Arc<Live>,
}

impl JobHandle {
    /// The job's id (the protocol's task id).
    pub fn id(&self) -> String {
        self.live.id.clone()
    }

    /// Which attempt this is: 1 for the first run, more after a restart took the job up again.
    pub fn attempt(&self) -> i64 {
        self.live.attempt
    }

    /// Appends a line to the task's `details` (and the server log).
    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(kind = %self.live.kind, job = %self.live.id, "{line}");
        self.live.log(line);
    }

    /// Sets `progress`: `done` of `total` items, `current` the one being worked on.
    pub fn progress(&self, done: usize, total: usize, current: Option<&str>) {
        let mut s = self.live.lock();
        s.progress = Some(json!({"done": done, "total": total, "current": current}));
        s.dirty = true;
    }

    /// The last checkpoint saved with [`JobHandle::save_checkpoint`], by this attempt or by an
    /// earlier one that a restart interrupted.
    pub fn checkpoint(&self) -> Option<Value> {
        self.live.lock().checkpoint.clone()
    }

    /// Saves what a later attempt needs to continue (written at the next heartbeat and when the
    /// job ends).
    pub fn save_checkpoint(&self, checkpoint: Value) {
        let mut s = self.live.lock();
        s.checkpoint = Some(checkpoint);
        s.dirty = true;
    }

    /// The cancel flag, set by a stop (`DELETE`), by a lost lease or at shutdown; engine jobs
    /// share it so that a stop ends them between two windows.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.live.cancel.clone()
    }

    /// Whether the job should stop now.
    pub fn is_cancelled(&self) -> bool {
        self.live.cancel.load(Ordering::SeqCst)
    }

    /// A handle for code outside a scheduler (the CLI, unit tests): attempt 1, no checkpoint.
    pub fn detached(kind: &str) -> JobHandle {
        JobHandle {
            live: Arc::new(Live::new(
                crate::jobs::new_id(),
                kind.to_string(),
                1,
                Vec::new(),
                None,
                None,
            )),
        }
    }

    /// A handle as a later attempt sees it: attempt `attempt`, with `checkpoint` saved by an
    /// earlier one (tests of resumable jobs).
    #[doc(hidden)]
    pub fn with_checkpoint(kind: &str, attempt: i64, checkpoint: Value) -> JobHandle {
        JobHandle {
            live: Arc::new(Live::new(
                crate::jobs::new_id(),
                kind.to_string(),
                attempt,
                Vec::new(),
                None,
                Some(checkpoint),
            )),
        }
    }

    /// The details logged so far (oldest first).
    pub fn details(&self) -> Vec<String> {
        self.live.lock().details.iter().cloned().collect()
    }
}
