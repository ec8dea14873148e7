-- Journal schema v1. Times are RFC 3339 UTC text; JSON columns hold protocol types.

-- Small facts: enrollment (device id, server URL, pinned lease keys), the server's
-- policy, rate sheet and last known balance.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Claims written before they are sent; deleted once their answer was acted upon.
CREATE TABLE pending_claims (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    claim_id TEXT NOT NULL UNIQUE,
    request  TEXT NOT NULL,
    created  TEXT NOT NULL
);

-- The latest window held per (user, product) with its signed lease.
CREATE TABLE windows (
    user      TEXT NOT NULL,
    product   TEXT NOT NULL,
    window_id TEXT NOT NULL,
    source    TEXT NOT NULL,
    start     TEXT NOT NULL,
    end       TEXT NOT NULL,
    lease     TEXT NOT NULL,
    PRIMARY KEY (user, product)
);

-- Sessions, running and ended, until the server has stored their final form.
-- `revision` grows with every change; `uploaded_revision` is the one the server
-- acknowledged, so a change made while an upload is in flight is sent again.
CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,
    user              TEXT NOT NULL,
    product           TEXT NOT NULL,
    version           TEXT,
    source            TEXT NOT NULL,
    window_id         TEXT,
    started_at        TEXT NOT NULL,
    ended_at          TEXT,
    uid               INTEGER NOT NULL,
    account           TEXT NOT NULL,
    pid               INTEGER,
    origin            TEXT NOT NULL,
    revision          INTEGER NOT NULL,
    uploaded_revision INTEGER NOT NULL DEFAULT 0
);

-- The offline clock: last server contact and the checkpoint it is measured from.
CREATE TABLE clock (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    contact            TEXT,
    since_contact_ms   INTEGER NOT NULL,
    checkpoint_wall    TEXT NOT NULL,
    checkpoint_boot_ms INTEGER NOT NULL,
    boot_id            TEXT,
    high_water         TEXT NOT NULL
);

-- Wall-clock rollbacks not yet reported to the server.
CREATE TABLE clock_rollbacks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    detected_at TEXT NOT NULL,
    seconds     INTEGER NOT NULL
);
