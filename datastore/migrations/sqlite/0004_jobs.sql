-- ferrolabel datastore schema, version 4: the jobs table of the scheduler.
--
-- One row per background job (training, batch inference, scoring, periodic sweeps...). A runner
-- (one server instance) claims a job by taking its lease (`lease_owner`, `lease_until`) in one
-- `BEGIN IMMEDIATE` transaction and keeps it alive with heartbeats; a job whose lease ran out
-- while `running` is taken up again by any runner. Jobs of one `lane` run one at a time: a lane
-- is busy while some row of it holds a live lease, whatever its state.
-- All times are epoch milliseconds.

CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order (FIFO within a priority)
    id               TEXT    NOT NULL UNIQUE,            -- uuid
    kind             TEXT    NOT NULL,                   -- train, batch_infer, scoring, sweep_sessions...
    lane             TEXT    NOT NULL,                   -- jobs of one lane run one at a time
    priority         INTEGER NOT NULL,                   -- higher first
    state            TEXT    NOT NULL
                     CHECK (state IN ('queued', 'running', 'done', 'error', 'stopped')),
    params           TEXT    NOT NULL,                   -- JSON: the typed task
    request          TEXT    NOT NULL,                   -- JSON: the protocol's request object
    progress         TEXT,                               -- JSON
    checkpoint       TEXT,                               -- JSON: what a resumed attempt needs
    details          TEXT    NOT NULL DEFAULT '[]',      -- JSON array of the last log lines
    result           TEXT,                               -- JSON
    error            TEXT,
    owner            TEXT,                               -- client id / user name
    lease_owner      TEXT,                               -- the runner holding the job
    lease_until      INTEGER,                            -- live while lease_owner IS NOT NULL AND lease_until >= now
    heartbeat_at     INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    history          TEXT    NOT NULL DEFAULT '[]',      -- JSON array, one object per attempt
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    not_before       INTEGER,                            -- a queued job is not claimed before
    every_ms         INTEGER,                            -- periodic jobs: period
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,                            -- first attempt
    finished_at      INTEGER
);

-- What a claim scans: jobs that may be taken, best first.
CREATE INDEX jobs_claimable ON jobs(priority DESC, seq) WHERE state IN ('queued', 'running');
-- The lane-busy test: rows holding a lease.
CREATE INDEX jobs_leased ON jobs(lane, lease_until) WHERE lease_owner IS NOT NULL;
CREATE INDEX jobs_kind ON jobs(kind, seq);
