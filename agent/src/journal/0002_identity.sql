-- Journal schema v2: process identity, account ids, window costs, per-result jobs.

-- A session's process is its pid *and* start time (see `process::ProcessId`), so
-- a pid reused by another process after an agent restart is never taken for it.
-- `account_id` is the opaque account id (decimal uid on Unix, SID on Windows);
-- rows written before it have only `uid`.
ALTER TABLE sessions ADD COLUMN pid_start INTEGER;
ALTER TABLE sessions ADD COLUMN account_id TEXT;

-- What opening the window cost, shown by `flexctl status`.
ALTER TABLE windows ADD COLUMN tokens_charged INTEGER NOT NULL DEFAULT 0;

-- Per-result jobs: which attempt (claim id) a job is on and how it ended.
CREATE TABLE jobs (
    user    TEXT NOT NULL,
    product TEXT NOT NULL,
    job     TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (user, product, job)
);
