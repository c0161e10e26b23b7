//! The JSON views of jobs: the protocol's task object (docs/protocol.md §4.2) with ferrolabel's
//! additions — `kind`, `state`, the queue `position`, `attempts` and their `history`, and an
//! `estimate` of start and end from measured rates.
//!
//! Estimates come from what was measured, never from guesses: a running job's own pace
//! (seconds per image or training step so far, in this attempt), and for a job that has not
//! started, the pace of the last finished jobs of its kind (seconds per image for batches,
//! per epoch for training). Where nothing was measured yet the estimate is `null`.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::TimeZone;
use ferrolabel_datastore::{JobRow, JobState};
use serde_json::{json, Map, Value};

use super::handle::Live;
use super::spec::{kind_title, TaskSpec};

/// How many jobs the views read (the newest).
pub const LIST_LIMIT: usize = 1000;

/// The protocol's status of a state.
pub fn status(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "SUBMITTED",
        JobState::Running => "RUNNING",
        JobState::Done => "DONE",
        JobState::Error => "ERROR",
        JobState::Stopped => "STOPPED",
    }
}

/// A time in ms as the protocol writes task timestamps (local time).
pub fn ts(ms: i64) -> String {
    chrono::Local
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Where a job stands in its lane's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueInfo {
    pub(crate) position: usize,
    /// Estimated start and end (ms), when measured rates allow.
    pub(crate) estimate: Option<(i64, i64)>,
}

/// The task object of `row`; `live` (the job runs here) has the freshest details and progress.
pub(crate) fn task_object(row: &JobRow, live: Option<&Live>, queue: Option<QueueInfo>) -> Value {
    let (details, progress) = match live {
        Some(l) => {
            let s = l.lock();
            (s.details.iter().cloned().collect(), s.progress.clone())
        }
        None => (row.details.clone(), row.progress.clone()),
    };
    let mut details: Vec<String> = details;
    if details.is_empty() {
        // never empty: Slicer logs the last line
        details.push(format!("{} task queued", kind_title(&row.kind)));
    }
    let mut m = Map::new();
    m.insert("id".into(), row.id.clone().into());
    m.insert("status".into(), status(row.state).into());
    m.insert("request".into(), row.request.clone());
    m.insert(
        "start_ts".into(),
        ts(row.started_at.unwrap_or(row.created_at)).into(),
    );
    m.insert("details".into(), json!(details));
    if let Some(p) = progress {
        m.insert("progress".into(), p);
    }
    if row.state.is_ended() {
        if let Some(f) = row.finished_at {
            m.insert("end_ts".into(), ts(f).into());
        }
    }
    if let Some(r) = &row.result {
        if row.state == JobState::Done || row.every_ms.is_some() {
            m.insert("result".into(), r.clone());
        }
    }
    if let Some(e) = &row.error {
        m.insert("error".into(), e.clone().into());
    }
    m.insert("kind".into(), row.kind.clone().into());
    m.insert("state".into(), row.state.as_str().into());
    m.insert("priority".into(), row.priority.into());
    if let Some(o) = &row.owner {
        m.insert("owner".into(), o.clone().into());
    }
    m.insert("created_ts".into(), ts(row.created_at).into());
    m.insert("attempts".into(), row.attempts.into());
    m.insert("history".into(), history(&row.history));
    if let Some(every) = row.every_ms {
        m.insert("every_s".into(), json!(every as f64 / 1000.0));
        if let (JobState::Queued, Some(nb)) = (row.state, row.not_before) {
            m.insert("next_run_ts".into(), ts(nb).into());
        }
    }
    if let Some(q) = queue {
        m.insert("position".into(), q.position.into());
        m.insert(
            "estimate".into(),
            match q.estimate {
                Some((start, end)) => json!({
                    "start_ts": ts(start),
                    "end_ts": ts(end),
                    "seconds_left": ((end - super::now_ms()).max(0) as f64 / 1000.0).round(),
                }),
                None => Value::Null,
            },
        );
    }
    Value::Object(m)
}

/// The attempts with protocol timestamps.
fn history(h: &Value) -> Value {
    let list = h.as_array().cloned().unwrap_or_default();
    Value::Array(
        list.into_iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert(
                    "attempt".into(),
                    e.get("attempt").cloned().unwrap_or(Value::Null),
                );
                m.insert(
                    "runner".into(),
                    e.get("runner").cloned().unwrap_or(Value::Null),
                );
                if let Some(s) = e.get("started_at").and_then(Value::as_i64) {
                    m.insert("start_ts".into(), ts(s).into());
                }
                if let Some(s) = e.get("ended_at").and_then(Value::as_i64) {
                    m.insert("end_ts".into(), ts(s).into());
                }
                if let Some(s) = e.get("end").filter(|v| !v.is_null()) {
                    m.insert("end".into(), s.clone());
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// Units of work of a job, in the units its rate is measured in: images of a batch, epochs of
/// a training (known before it runs), else its progress total.
fn units(row: &JobRow) -> Option<f64> {
    serde_json::from_value::<TaskSpec>(row.params.clone())
        .ok()
        .and_then(|s| s.items())
        .or_else(|| {
            row.progress
                .as_ref()?
                .get("total")?
                .as_u64()
                .map(|t| t as usize)
        })
        .filter(|n| *n > 0)
        .map(|n| n as f64)
}

/// Seconds per unit of the finished jobs `rows` (their run time over their units).
pub(crate) fn rate_of_finished(rows: &[JobRow]) -> Option<f64> {
    let (mut secs, mut n) = (0.0, 0.0);
    for r in rows {
        if let (Some(s), Some(f), Some(u)) = (last_attempt_start(r), r.finished_at, units(r)) {
            secs += (f - s).max(0) as f64 / 1000.0;
            n += u;
        }
    }
    (n > 0.0).then(|| secs / n)
}

/// When the current (or last) attempt started, in ms.
fn last_attempt_start(r: &JobRow) -> Option<i64> {
    r.history
        .as_array()
        .and_then(|h| h.last())
        .and_then(|e| e.get("started_at")?.as_i64())
        .or(r.started_at)
}

/// Milliseconds left for a running job: its own pace so far, else its kind's rate.
fn running_left(
    row: &JobRow,
    progress: Option<&Value>,
    rate: Option<f64>,
    now: i64,
) -> Option<i64> {
    let done = progress
        .and_then(|p| p.get("done")?.as_f64())
        .unwrap_or(0.0);
    let total = progress.and_then(|p| p.get("total")?.as_f64());
    let started = last_attempt_start(row)?;
    if let (Some(total), true) = (total, done > 0.0) {
        let per = (now - started).max(0) as f64 / done;
        return Some((per * (total - done).max(0.0)) as i64);
    }
    let whole = rate? * units(row)? * 1000.0;
    Some((whole as i64 - (now - started)).max(0))
}

/// Task objects of `rows` (oldest first) with each queued or running job's place in its lane
/// and its estimate. `rates`: seconds per unit of the last finished jobs, by kind.
pub(crate) fn with_queue(
    rows: &[JobRow],
    live: &HashMap<String, Arc<Live>>,
    rates: &HashMap<String, f64>,
    now: i64,
) -> Vec<Value> {
    // per lane: the running job, then the queued ones in claim order
    let mut lanes: HashMap<&str, Vec<&JobRow>> = HashMap::new();
    for r in rows {
        let waiting = r.state == JobState::Queued && r.every_ms.is_none();
        if waiting || r.state == JobState::Running {
            lanes.entry(r.lane.as_str()).or_default().push(r);
        }
    }
    let mut info: HashMap<&str, QueueInfo> = HashMap::new();
    for (_, mut jobs) in lanes {
        jobs.sort_by_key(|r| (r.state != JobState::Running, -r.priority, r.seq));
        let mut clock = Some(now);
        let mut position = 0;
        for r in jobs {
            let rate = rates.get(&r.kind).copied();
            let (pos, start, len) = if r.state == JobState::Running {
                let progress = live
                    .get(&r.id)
                    .and_then(|l| l.lock().progress.clone())
                    .or_else(|| r.progress.clone());
                let left = running_left(r, progress.as_ref(), rate, now);
                (0, last_attempt_start(r), left)
            } else {
                position += 1;
                let len = rate.zip(units(r)).map(|(s, u)| (s * u * 1000.0) as i64);
                (position, clock, len)
            };
            let estimate = match (start, clock, len) {
                (Some(s), Some(c), Some(l)) if pos == 0 => Some((s, c + l)),
                (_, Some(c), Some(l)) => Some((c, c + l)),
                _ => None,
            };
            clock = estimate.map(|(_, e)| e);
            info.insert(
                r.id.as_str(),
                QueueInfo {
                    position: pos,
                    estimate,
                },
            );
        }
    }
    rows.iter()
        .map(|r| {
            task_object(
                r,
                live.get(&r.id).map(|l| l.as_ref()),
                info.get(r.id.as_str()).copied(),
            )
        })
        .collect()
}
