//! Background tasks of one kind (scoring, batch inference) with MONAI Label's semantics
//! (docs/protocol.md §10): one task of a kind runs at a time (a second start is refused with
//! [`AppError::Busy`], 429), tasks are kept in memory for the life of the server, and each is
//! described by the protocol's task object:
//!
//! ```json
//! {"id": "...", "status": "RUNNING", "request": {...}, "start_ts": "2025-01-31 14:02:11",
//!  "details": ["..."], "progress": {"done": 3, "total": 10, "current": "case_04"}}
//! ```
//!
//! `status` goes `RUNNING` → `DONE` | `ERROR` | `STOPPED`; `end_ts` appears when the task ends;
//! `details` keeps the last 20 log lines (never empty, so Slicer's log message cannot crash);
//! `progress` and, once done, `result` are ferrolabel additions.
//!
//! The work itself runs elsewhere (the engine thread, the blocking pool); it reports through a
//! [`TaskHandle`], which also carries the cancel flag that [`TaskQueue::stop`] sets. A handle
//! dropped without [`TaskHandle::finish`] (a panic) marks its task `ERROR`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};

/// Log lines kept per task.
const MAX_DETAILS: usize = 20;

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Working.
    Running,
    /// Finished successfully.
    Done,
    /// Failed.
    Error,
    /// Stopped by `DELETE`.
    Stopped,
}

impl TaskStatus {
    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Running => "RUNNING",
            TaskStatus::Done => "DONE",
            TaskStatus::Error => "ERROR",
            TaskStatus::Stopped => "STOPPED",
        }
    }
}

#[derive(Debug)]
struct Task {
    id: String,
    status: TaskStatus,
    request: Value,
    start_ts: String,
    end_ts: Option<String>,
    details: VecDeque<String>,
    progress: Option<Value>,
    result: Option<Value>,
}

impl Task {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("status".into(), self.status.as_str().into());
        m.insert("request".into(), self.request.clone());
        m.insert("start_ts".into(), self.start_ts.clone().into());
        m.insert(
            "details".into(),
            Value::Array(self.details.iter().cloned().map(Value::from).collect()),
        );
        if let Some(p) = &self.progress {
            m.insert("progress".into(), p.clone());
        }
        if let Some(e) = &self.end_ts {
            m.insert("end_ts".into(), e.clone().into());
        }
        if let Some(r) = &self.result {
            m.insert("result".into(), r.clone());
        }
        Value::Object(m)
    }

    fn log(&mut self, line: String) {
        if self.details.len() == MAX_DETAILS {
            self.details.pop_front();
        }
        self.details.push_back(line);
    }
}

#[derive(Debug, Default)]
struct Inner {
    tasks: Vec<Task>,
    /// Index of the task whose work has not ended yet, and its cancel flag.
    active: Option<(usize, Arc<AtomicBool>)>,
}

/// The tasks of one kind; cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskQueue {
    kind: &'static str,
    inner: Arc<Mutex<Inner>>,
}

/// Local time as the protocol writes task timestamps.
fn now_ts() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

impl TaskQueue {
    /// An empty queue; `kind` is the capitalised name used in messages (`Scoring`,
    /// `Batch_infer`).
    pub fn new(kind: &'static str) -> TaskQueue {
        TaskQueue {
            kind,
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // a panic while holding the lock only ever leaves a consistent Vec behind
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a running task for `request`; [`AppError::Busy`] while another one's work has
    /// not ended (including a stopped task that is still winding down).
    pub fn start(&self, request: Value) -> Result<TaskHandle> {
        let mut inner = self.lock();
        if inner.active.is_some() {
            return Err(AppError::Busy(format!(
                "{} Task is Already Running",
                self.kind
            )));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let mut task = Task {
            id: uuid_like(),
            status: TaskStatus::Running,
            request,
            start_ts: now_ts(),
            end_ts: None,
            details: VecDeque::new(),
            progress: None,
            result: None,
        };
        task.log(format!("{} task started", self.kind));
        inner.tasks.push(task);
        let index = inner.tasks.len() - 1;
        inner.active = Some((index, cancel.clone()));
        tracing::info!(kind = self.kind, "task started");
        Ok(TaskHandle {
            queue: self.clone(),
            index,
            cancel,
            finished: false,
        })
    }

    /// The task whose status is `RUNNING`, if any.
    pub fn running(&self) -> Option<Value> {
        let inner = self.lock();
        let (i, _) = inner.active.as_ref()?;
        let t = &inner.tasks[*i];
        (t.status == TaskStatus::Running).then(|| t.to_json())
    }

    /// The most recent task, if any.
    pub fn last(&self) -> Option<Value> {
        self.lock().tasks.last().map(Task::to_json)
    }

    /// Every task since the server started, oldest first.
    pub fn all(&self) -> Vec<Value> {
        self.lock().tasks.iter().map(Task::to_json).collect()
    }

    /// Stops the running task: sets its cancel flag (its work ends at the next window or
    /// image) and answers the task marked `STOPPED`; `None` when nothing runs.
    pub fn stop(&self) -> Option<Value> {
        let mut inner = self.lock();
        let (i, cancel) = inner.active.clone()?;
        let t = &mut inner.tasks[i];
        if t.status != TaskStatus::Running {
            return None;
        }
        cancel.store(true, Ordering::SeqCst);
        t.status = TaskStatus::Stopped;
        t.end_ts = Some(now_ts());
        t.log("stop requested".into());
        tracing::info!(kind = self.kind, "task stop requested");
        Some(t.to_json())
    }
}

fn uuid_like() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let a: u128 = rng.gen();
    let h = format!("{a:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The running task's side: progress, log lines, the cancel flag, and the outcome.
#[derive(Debug)]
pub struct TaskHandle {
    queue: TaskQueue,
    index: usize,
    cancel: Arc<AtomicBool>,
    finished: bool,
}

impl TaskHandle {
    fn with<R>(&self, f: impl FnOnce(&mut Task) -> R) -> R {
        let mut inner = self.queue.lock();
        f(&mut inner.tasks[self.index])
    }

    /// The task's id.
    pub fn id(&self) -> String {
        self.with(|t| t.id.clone())
    }

    /// The task object as it stands.
    pub fn to_json(&self) -> Value {
        self.with(|t| t.to_json())
    }

    /// Appends a line to `details` (and the server log).
    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(kind = self.queue.kind, "{line}");
        self.with(|t| t.log(line));
    }

    /// Sets `progress`: `done` of `total` items, `current` the one being worked on.
    pub fn progress(&self, done: usize, total: usize, current: Option<&str>) {
        self.with(|t| {
            t.progress = Some(json!({"done": done, "total": total, "current": current}));
        });
    }

    /// The cancel flag (shared with engine jobs so that a stop ends them between windows).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Whether a stop was requested.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Records the outcome and frees the queue. A stopped task stays `STOPPED`, whatever the
    /// outcome of its interrupted work.
    pub fn finish(mut self, outcome: &Result<Value>) {
        self.end(outcome.as_ref().map_err(|e| e.to_string()).cloned());
    }

    fn end(&mut self, outcome: std::result::Result<Value, String>) {
        self.finished = true;
        let mut inner = self.queue.lock();
        let kind = self.queue.kind;
        let t = &mut inner.tasks[self.index];
        if t.status == TaskStatus::Running {
            match outcome {
                Ok(v) => {
                    t.status = TaskStatus::Done;
                    t.result = Some(v);
                    t.log(format!("{kind} task done"));
                }
                Err(e) => {
                    t.status = TaskStatus::Error;
                    t.log(format!("{kind} task failed: {e}"));
                }
            }
            t.end_ts = Some(now_ts());
        } else {
            t.log(format!("{kind} task stopped"));
        }
        tracing::info!(kind, status = t.status.as_str(), "task ended");
        if inner.active.as_ref().is_some_and(|(i, _)| *i == self.index) {
            inner.active = None;
        }
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.end(Err("the task ended unexpectedly".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_and_statuses() {
        let q = TaskQueue::new("Scoring");
        assert!(q.last().is_none() && q.running().is_none() && q.stop().is_none());
        let h = q.start(json!({"method": "dice"})).unwrap();
        assert_eq!(q.running().unwrap()["status"], "RUNNING");
        let busy = q.start(json!({})).unwrap_err();
        assert_eq!(busy.status(), 429);
        h.progress(1, 2, Some("a"));
        assert_eq!(q.last().unwrap()["progress"]["done"], 1);
        h.finish(&Ok(json!({"a": 1.0})));
        let last = q.last().unwrap();
        assert_eq!(last["status"], "DONE");
        assert_eq!(last["result"]["a"], 1.0);
        assert!(last["end_ts"].is_string());
        assert!(q.running().is_none());

        let h = q.start(json!({})).unwrap();
        let stopped = q.stop().unwrap();
        assert_eq!(stopped["status"], "STOPPED");
        assert!(h.is_cancelled());
        // still winding down: a new task must wait
        assert_eq!(q.start(json!({})).unwrap_err().status(), 429);
        assert!(q.running().is_none());
        h.finish(&Err(AppError::Cancelled));
        assert_eq!(q.last().unwrap()["status"], "STOPPED");
        assert_eq!(q.all().len(), 2);

        let h = q.start(json!({})).unwrap();
        drop(h);
        assert_eq!(q.last().unwrap()["status"], "ERROR");
        assert!(q.start(json!({})).is_ok());
    }
}
