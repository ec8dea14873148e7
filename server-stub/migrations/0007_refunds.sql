-- R13 short runs are free: a window no process of its (user, product) used
-- on the asking device at its start plus policy.short_use_grace is refunded to
-- the lots it came from (store/refunds.rs, rules/refunds.rs).

-- Every device answered with a window, and when last: only a device that
-- holds a window may ask for its refund, and a grant after the grace is a use.
-- Windows granted before this migration are known by the device that paid.
CREATE TABLE window_grants (
    window_id  TEXT NOT NULL REFERENCES windows(id),
    device_id  TEXT NOT NULL,
    last_at    TEXT NOT NULL,
    PRIMARY KEY (window_id, device_id)
) WITHOUT ROWID;
INSERT INTO window_grants (window_id, device_id, last_at)
SELECT window_id, device_id, MAX(created_at) FROM charges
WHERE window_id IS NOT NULL AND device_id IS NOT NULL
GROUP BY window_id, device_id;

-- The refunds: a ledger event each, at most one per window (and so per
-- charge). The usage rollup folds them after the id in meta 'rollup.refund_id'.
CREATE TABLE refunds (
    id          INTEGER PRIMARY KEY,
    window_id   TEXT NOT NULL UNIQUE REFERENCES windows(id),
    charge_id   INTEGER NOT NULL UNIQUE REFERENCES charges(id),
    device_id   TEXT NOT NULL,
    tokens      INTEGER NOT NULL CHECK (tokens >= 0), -- given back; less than charged when a lot expired
    created_at  TEXT NOT NULL
);
CREATE INDEX refunds_created ON refunds (created_at);

-- Each lot's share of a refund (never a lot expired at the refund's time).
CREATE TABLE refund_lots (
    refund_id  INTEGER NOT NULL REFERENCES refunds(id),
    lot_id     INTEGER NOT NULL REFERENCES lots(id),
    tokens     INTEGER NOT NULL CHECK (tokens > 0),
    PRIMARY KEY (refund_id, lot_id)
);

-- A window's verdict, answered once and replayed to every repeat: the refund,
-- or the refusal of a window that was used.
CREATE TABLE refund_answers (
    window_id   TEXT PRIMARY KEY REFERENCES windows(id),
    status      INTEGER NOT NULL,
    response    TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- A refund reads the asking device's runs of the window's (user, product).
CREATE INDEX sessions_device_runs ON sessions (device_id, user, product, started_at);
