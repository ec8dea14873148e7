-- Idempotent enrollment (issue 18). An agent sends a random request id (a
-- secret it journals before sending) with its enrollment and repeats it on
-- every retry; a repeat gets the same device and the same credential without
-- spending another use of the key. Only the SHA-256 of the id is kept. The
-- device token of such an enrollment is HMAC-SHA256(id, token_salt): neither
-- this table nor the id alone gives it. token_salt is cleared at the device's
-- first heartbeat; from then on a repeat is refused (409).
CREATE TABLE enrollment_requests (
    request_hash  TEXT PRIMARY KEY,
    device_id     TEXT NOT NULL UNIQUE REFERENCES devices (id),
    key_id        TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    token_salt    TEXT,
    created_at    TEXT NOT NULL
);
