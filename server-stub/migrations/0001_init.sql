-- Initial schema. Times are RFC 3339 UTC text, which sorts chronologically.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    email         TEXT PRIMARY KEY,
    first_name    TEXT NOT NULL,
    last_name     TEXT NOT NULL,
    flex_assigned INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL
);

CREATE TABLE subscriptions (
    email      TEXT NOT NULL REFERENCES users(email),
    product    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (email, product)
);

CREATE TABLE default_assignments (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    mode     TEXT NOT NULL,
    products TEXT NOT NULL
);
INSERT INTO default_assignments (id, mode, products) VALUES (1, 'all', '[]');

CREATE TABLE lots (
    id                INTEGER PRIMARY KEY,
    tokens            INTEGER NOT NULL CHECK (tokens > 0),
    remaining         INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= tokens),
    purchased_at      TEXT NOT NULL,
    expires_at        TEXT NOT NULL,
    expiry_noticed    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE windows (
    id         TEXT PRIMARY KEY,
    user       TEXT NOT NULL,
    product    TEXT NOT NULL,
    source     TEXT NOT NULL,
    start      TEXT NOT NULL,
    end        TEXT NOT NULL,
    renews     TEXT REFERENCES windows(id)
);
CREATE INDEX windows_user_product ON windows (user, product, start);

CREATE TABLE charges (
    id         INTEGER PRIMARY KEY,
    claim_id   TEXT NOT NULL,
    user       TEXT NOT NULL,
    product    TEXT NOT NULL,
    version    TEXT,
    kind       TEXT NOT NULL,
    source     TEXT NOT NULL,
    window_id  TEXT REFERENCES windows(id),
    results    INTEGER,
    tokens     INTEGER NOT NULL CHECK (tokens >= 0),
    device_id  TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX charges_user ON charges (user, created_at);

CREATE TABLE charge_lots (
    charge_id INTEGER NOT NULL REFERENCES charges(id),
    lot_id    INTEGER NOT NULL REFERENCES lots(id),
    tokens    INTEGER NOT NULL CHECK (tokens > 0),
    PRIMARY KEY (charge_id, lot_id)
);

-- Every answered claim, forever: a repeated claim id gets the same answer.
CREATE TABLE claims (
    claim_id     TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    status       INTEGER NOT NULL,
    response     TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE notices (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE lease_keys (
    kid        TEXT PRIMARY KEY,
    secret     BLOB NOT NULL,
    created_at TEXT NOT NULL,
    active     INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    device_id  TEXT
);

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    hostname    TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    enrolled_at TEXT NOT NULL,
    last_seen   TEXT
);

CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices(id),
    user       TEXT NOT NULL,
    product    TEXT NOT NULL,
    version    TEXT,
    source     TEXT NOT NULL,
    window_id  TEXT,
    started_at TEXT NOT NULL,
    ended_at   TEXT
);

CREATE TABLE clock_rollbacks (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT NOT NULL,
    detected_at TEXT NOT NULL,
    seconds     INTEGER NOT NULL,
    received_at TEXT NOT NULL
);
