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
    /// The time the estimate was made at (ms), which `seconds_left` counts from.
    pub(crate) now: i64,
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
                    "seconds_left": ((end - q.now).max(0) as f64 / 1000.0).round(),
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

/// Milliseconds left for a running job: the pace of this attempt on its own work so far
/// (`start_done`: what earlier attempts had done, known for a job running here), else its
/// kind's rate.
fn running_left(
    row: &JobRow,
    progress: Option<&Value>,
    start_done: Option<f64>,
    rate: Option<f64>,
    now: i64,
) -> Option<i64> {
    let done = progress
        .and_then(|p| p.get("done")?.as_f64())
        .unwrap_or(0.0);
    let total = progress.and_then(|p| p.get("total")?.as_f64());
    let started = last_attempt_start(row)?;
    let base = match start_done {
        Some(b) => b,
        // a first attempt running elsewhere did all of its work itself
        None if row.attempts <= 1 => 0.0,
        None => f64::INFINITY,
    };
    if let (Some(total), true) = (total, done - base > 0.0) {
        let per = (now - started).max(0) as f64 / (done - base);
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
                let here = live.get(&r.id);
                let progress = here
                    .and_then(|l| l.lock().progress.clone())
                    .or_else(|| r.progress.clone());
                let start_done = here.map(|l| l.start_done);
                let left = running_left(r, progress.as_ref(), start_done, rate, now);
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
                    now,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of `kind` (its own lane) in `state`, inserted `seq`-th, created at `t0`; no
    /// attempts yet.
    fn row(id: &str, kind: &str, state: JobState, seq: i64) -> JobRow {
        JobRow {
            seq,
            id: id.into(),
            kind: kind.into(),
            lane: kind.into(),
            priority: 0,
            state,
            params: json!({"task": "scoring", "methods": ["dice"], "all": false, "params": {}}),
            request: json!({"model": "wholebody"}),
            progress: None,
            checkpoint: None,
            details: Vec::new(),
            result: None,
            error: None,
            owner: None,
            lease_owner: None,
            lease_until: None,
            heartbeat_at: None,
            attempts: 0,
            history: json!([]),
            cancel_requested: false,
            not_before: None,
            every_ms: None,
            created_at: T0,
            started_at: None,
            finished_at: None,
        }
    }

    const T0: i64 = 1_700_000_000_000;

    /// A batch of `n` images.
    fn batch(id: &str, state: JobState, seq: i64, n: usize) -> JobRow {
        let images: Vec<String> = (0..n).map(|i| format!("img{i}")).collect();
        let mut r = row(id, BATCH, state, seq);
        r.params = json!({"task": "batch_infer", "model": "wholebody", "images": images,
                          "params": {}});
        r
    }

    const BATCH: &str = super::super::spec::BATCH_INFER;

    /// `r` running its first attempt since `start`.
    fn running(mut r: JobRow, start: i64) -> JobRow {
        r.state = JobState::Running;
        r.attempts = 1;
        r.started_at = Some(start);
        r.lease_owner = Some("runner-a".into());
        r.lease_until = Some(start + 30_000);
        r.history = json!([{"attempt": 1, "runner": "runner-a", "started_at": start,
                            "ended_at": null, "end": null}]);
        r
    }

    fn by_id<'a>(views: &'a [Value], id: &str) -> &'a Value {
        views
            .iter()
            .find(|v| v["id"] == id)
            .expect("a view per row")
    }

    fn views(rows: &[JobRow], rates: &[(&str, f64)], now: i64) -> Vec<Value> {
        let rates = rates.iter().map(|(k, r)| (k.to_string(), *r)).collect();
        with_queue(rows, &HashMap::new(), &rates, now)
    }

    #[test]
    fn positions_per_lane_running_first_then_priority_then_seq() {
        let now = T0 + 60_000;
        let mut high = batch("high", JobState::Queued, 5, 3);
        high.priority = 5;
        let mut periodic = row("periodic:sweep", "periodic", JobState::Queued, 0);
        periodic.every_ms = Some(60_000);
        periodic.not_before = Some(now + 1000);
        let rows = vec![
            periodic,
            batch("old-done", JobState::Done, 1, 3),
            running(batch("run", JobState::Running, 2, 3), T0),
            batch("first", JobState::Queued, 3, 3),
            row("score", "scoring", JobState::Queued, 4),
            high,
            batch("second", JobState::Queued, 6, 3),
            batch("stopped", JobState::Stopped, 7, 3),
            batch("failed", JobState::Error, 8, 3),
        ];
        let v = views(&rows, &[], now);
        // one view per row, in the rows' order
        let ids: Vec<&str> = v.iter().map(|t| t["id"].as_str().unwrap()).collect();
        let want: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, want);
        assert_eq!(by_id(&v, "run")["position"], 0);
        assert_eq!(by_id(&v, "high")["position"], 1, "higher priority first");
        assert_eq!(by_id(&v, "first")["position"], 2);
        assert_eq!(by_id(&v, "second")["position"], 3);
        assert_eq!(by_id(&v, "score")["position"], 1, "its own lane");
        for ended in ["old-done", "stopped", "failed", "periodic:sweep"] {
            let t = by_id(&v, ended);
            assert!(t.get("position").is_none(), "{ended}: {t}");
            assert!(t.get("estimate").is_none(), "{ended}: {t}");
        }
    }

    #[test]
    fn estimates_from_own_pace_then_rate_times_images() {
        // the real clock: `seconds_left` counts from it
        let now = super::super::now_ms();
        let start = now - 20_000;
        let mut run = running(batch("run", JobState::Running, 1, 10), start);
        run.progress = Some(json!({"done": 2, "total": 10, "current": "img2"}));
        let rows = vec![
            run,
            batch("next", JobState::Queued, 2, 5),
            row("score", "scoring", JobState::Queued, 3),
        ];
        // 3 s per image measured on finished batches; nothing measured for scoring
        let v = views(&rows, &[(BATCH, 3.0)], now);
        // 2 of 10 in 20 s: 10 s an image, 8 left → ends 80 s from now
        let e = &by_id(&v, "run")["estimate"];
        assert_eq!(e["start_ts"], ts(start), "{e}");
        assert_eq!(e["end_ts"], ts(now + 80_000), "{e}");
        let left = e["seconds_left"].as_f64().unwrap();
        assert!((60.0..=80.0).contains(&left), "{e}");
        // the next batch starts when the running one ends and lasts 3 s × 5 images
        let e = &by_id(&v, "next")["estimate"];
        assert_eq!(e["start_ts"], ts(now + 80_000), "{e}");
        assert_eq!(e["end_ts"], ts(now + 95_000), "{e}");
        // no rate for its kind: null, but a position all the same
        let s = by_id(&v, "score");
        assert!(s["estimate"].is_null(), "{s}");
        assert_eq!(s["position"], 1);
    }

    #[test]
    fn estimates_unknown_pace_are_null_and_so_are_those_behind() {
        let now = T0 + 20_000;
        // running, no progress yet and no rate: unknown end, so the queued one is unknown too
        let rows = vec![
            running(batch("run", JobState::Running, 1, 10), T0),
            batch("next", JobState::Queued, 2, 5),
        ];
        let v = views(&rows, &[], now);
        assert!(by_id(&v, "run")["estimate"].is_null());
        assert!(by_id(&v, "next")["estimate"].is_null());
        assert_eq!(by_id(&v, "next")["position"], 1);
        // with a rate and no progress: rate × images less the time it has run
        let v = views(&rows, &[(BATCH, 3.0)], now);
        let e = &by_id(&v, "run")["estimate"];
        assert_eq!(e["end_ts"], ts(now + 10_000), "{e}");
        assert_eq!(by_id(&v, "next")["estimate"]["end_ts"], ts(now + 25_000));
        // a rate but no units for the running job (scoring, no progress yet): its end is
        // unknown, so nothing behind it gets an estimate even where its own length is known
        let mut next = row("next", "scoring", JobState::Queued, 2);
        next.progress = Some(json!({"done": 0, "total": 4}));
        let rows = vec![
            running(row("run", "scoring", JobState::Running, 1), T0),
            next,
        ];
        let v = views(&rows, &[("scoring", 2.0)], now);
        assert!(by_id(&v, "run")["estimate"].is_null());
        let n = by_id(&v, "next");
        assert!(n["estimate"].is_null(), "{n}");
    }

    #[test]
    fn estimates_live_progress_wins_over_the_rows() {
        let now = T0 + 20_000;
        let run = running(batch("run", JobState::Running, 1, 10), T0);
        // the row has no progress yet; the job here has done 4 of 10 (5 s an image)
        let progress = Some(json!({"done": 4, "total": 10}));
        let live = Live::new("run".into(), BATCH.into(), 1, vec![], None, None);
        live.lock().progress = progress;
        let live: HashMap<String, Arc<Live>> = [("run".to_string(), Arc::new(live))].into();
        let v = with_queue(&[run], &live, &HashMap::new(), now);
        assert_eq!(v[0]["estimate"]["end_ts"], ts(now + 30_000), "{}", v[0]);
        assert_eq!(v[0]["progress"]["done"], 4);
    }

    #[test]
    fn rate_of_finished_is_seconds_per_unit_of_last_attempts() {
        assert_eq!(rate_of_finished(&[]), None);
        // 10 images in 20 s; its first attempt started earlier and died: only the last counts
        let mut a = batch("a", JobState::Done, 1, 10);
        a.started_at = Some(T0);
        a.history = json!([
            {"attempt": 1, "runner": "x", "started_at": T0, "ended_at": T0 + 5_000,
             "end": "lease expired"},
            {"attempt": 2, "runner": "y", "started_at": T0 + 100_000, "ended_at": T0 + 120_000,
             "end": "done"},
        ]);
        a.finished_at = Some(T0 + 120_000);
        assert_eq!(rate_of_finished(std::slice::from_ref(&a)), Some(2.0));
        // 5 images in 40 s: (20 + 40) s over 15 images
        let mut b = batch("b", JobState::Done, 2, 5);
        b.started_at = Some(T0);
        b.finished_at = Some(T0 + 40_000);
        // a row without an end or without units adds nothing
        let mut c = batch("c", JobState::Done, 3, 7);
        c.started_at = Some(T0);
        let mut d = row("d", "periodic", JobState::Done, 4);
        d.params = json!({"task": "periodic", "name": "sweep"});
        d.started_at = Some(T0);
        d.finished_at = Some(T0 + 9_000);
        assert_eq!(rate_of_finished(&[a, b, c, d.clone()]), Some(4.0));
        assert_eq!(rate_of_finished(&[d]), None);
        // training: per epoch (max_epochs, default 50)
        let mut t = row("t", "train", JobState::Done, 5);
        t.params = json!({"task": "train", "params": {"max_epochs": "4"}});
        t.started_at = Some(T0);
        t.finished_at = Some(T0 + 8_000);
        assert_eq!(rate_of_finished(std::slice::from_ref(&t)), Some(2.0));
        t.params = json!({"task": "train", "params": {}});
        assert_eq!(rate_of_finished(&[t]), Some(8.0 / 50.0));
    }

    #[test]
    fn task_object_statuses_and_fields() {
        for (state, status) in [
            (JobState::Queued, "SUBMITTED"),
            (JobState::Running, "RUNNING"),
            (JobState::Done, "DONE"),
            (JobState::Error, "ERROR"),
            (JobState::Stopped, "STOPPED"),
        ] {
            let mut r = batch("j", state, 1, 2);
            r.finished_at = state.is_ended().then_some(T0 + 9_000);
            r.result = Some(json!({"n": 2}));
            let t = task_object(&r, None, None);
            assert_eq!(t["status"], status, "{t}");
            assert_eq!(t["state"], state.as_str(), "{t}");
            assert_eq!(t["kind"], BATCH);
            assert_eq!(t["request"], json!({"model": "wholebody"}));
            assert_eq!(t["created_ts"], ts(T0));
            // not started: start_ts is the creation time
            assert_eq!(t["start_ts"], ts(T0));
            assert_eq!(t.get("end_ts").is_some(), state.is_ended(), "{t}");
            assert_eq!(t.get("result").is_some(), state == JobState::Done, "{t}");
            // details never empty, even before the job has logged anything
            assert_eq!(t["details"], json!(["Batch_infer task queued"]), "{t}");
            // no queue info: no position, no estimate
            assert!(t.get("position").is_none() && t.get("estimate").is_none());
        }
        let mut r = running(batch("j", JobState::Running, 1, 2), T0 + 1_000);
        r.details = vec!["from the row".into()];
        r.owner = Some("alice".into());
        r.error = Some("boom".into());
        let t = task_object(&r, None, None);
        assert_eq!(t["details"], json!(["from the row"]));
        assert_eq!(t["start_ts"], ts(T0 + 1_000));
        assert_eq!(t["owner"], "alice");
        assert_eq!(t["error"], "boom");
        assert_eq!(t["attempts"], 1);
        // a job running here: its live details and progress win
        let live = Live::new(
            "j".into(),
            BATCH.into(),
            1,
            vec!["live line".into()],
            Some(json!({"done": 1, "total": 2})),
            None,
        );
        let t = task_object(&r, Some(&live), None);
        assert_eq!(t["details"], json!(["live line"]));
        assert_eq!(t["progress"], json!({"done": 1, "total": 2}));
    }

    #[test]
    fn task_object_history_timestamps() {
        let mut r = batch("j", JobState::Running, 1, 2);
        r.attempts = 2;
        r.started_at = Some(T0);
        r.history = json!([
            {"attempt": 1, "runner": "a", "started_at": T0, "ended_at": T0 + 30_000,
             "end": "lease expired"},
            {"attempt": 2, "runner": "b", "started_at": T0 + 45_000, "ended_at": null,
             "end": null},
        ]);
        let t = task_object(&r, None, None);
        assert_eq!(
            t["history"],
            json!([
                {"attempt": 1, "runner": "a", "start_ts": ts(T0), "end_ts": ts(T0 + 30_000),
                 "end": "lease expired"},
                {"attempt": 2, "runner": "b", "start_ts": ts(T0 + 45_000)},
            ])
        );
        // a periodic job shows its period and, while it waits, its next run
        let mut p = row("periodic:x", "periodic", JobState::Queued, 2);
        p.every_ms = Some(90_000);
        p.not_before = Some(T0 + 90_000);
        p.result = Some(json!({"swept": 3}));
        let t = task_object(&p, None, None);
        assert_eq!(t["every_s"], 90.0);
        assert_eq!(t["next_run_ts"], ts(T0 + 90_000));
        assert_eq!(
            t["result"],
            json!({"swept": 3}),
            "a periodic job keeps its last result"
        );
    }
}
