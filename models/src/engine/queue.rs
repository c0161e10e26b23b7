//! The engine's queue state and its record of every job (see [`JobRecord`]).

use super::Job;
use std::collections::VecDeque;

/// What the engine recorded about one job, in units of *background windows*: the engine
/// counts every sliding window (for a Monte Carlo job: every forward pass) that a background
/// job finishes. An interactive job queued while a background job runs waits for at most one
/// of them (`waited_windows <= 1`); a first-in-first-out engine would make it wait for all
/// `background_windows_left`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JobRecord {
    /// Place of the job in the engine's run order (1 = the first job it started).
    pub order: u64,
    /// Background windows run before the job was queued.
    pub queued_at: u64,
    /// Background windows run before the job started.
    pub started_at: u64,
    /// Background windows run when the job finished (for a background job,
    /// `finished_at - started_at` are its own windows).
    pub finished_at: u64,
    /// Background windows run while the job waited: `started_at - queued_at`.
    pub waited_windows: u64,
    /// Windows the running background job still had to run when this job was queued (0 when
    /// none was running, or it had not reached its windows yet).
    pub background_windows_left: u64,
    /// The job ran between two windows of a background job.
    pub between_windows: bool,
}

/// A job in the queue, with what the engine knew when it was queued.
pub(super) struct Queued {
    pub(super) job: Job,
    pub(super) queued_at: u64,
    pub(super) background_windows_left: u64,
}

/// The queues and the background-window counter; all changed under one lock, so a job's
/// `queued_at` and `background_windows_left` are a consistent snapshot.
#[derive(Default)]
pub(super) struct Queues {
    pub(super) interactive: VecDeque<Queued>,
    pub(super) background: VecDeque<Queued>,
    pub(super) shutdown: bool,
    /// Background windows run since start.
    pub(super) background_windows: u64,
    /// Windows done and in all of the running background job (0/0: none, or not in its
    /// windows yet).
    pub(super) background_done: u64,
    pub(super) background_total: u64,
}
