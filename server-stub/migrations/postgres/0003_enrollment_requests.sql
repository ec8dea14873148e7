-- Idempotent enrollment (issue 18), as SQLite's 0008_enrollment_requests.sql
-- says: a repeat of an enrollment's request id gets the same device and
-- credential without spending another use of the key, until the device's
-- first heartbeat clears token_salt.
CREATE TABLE enrollment_requests (
    request_hash  TEXT COLLATE "C" PRIMARY KEY,
    device_id     TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES devices (id),
    key_id        TEXT COLLATE "C" NOT NULL,
    hostname      TEXT NOT NULL,
    token_salt    TEXT COLLATE "C",
    created_at    TEXT COLLATE "C" NOT NULL
);
