-- Enrollment keys for fleets (issue 9): one key enrolls up to `uses` agents until
-- `expires_at`, unless revoked. Only the SHA-256 of the secret is kept. Replaces
-- the single-use enrollment_tokens table; its rows carry over as one-use keys.
CREATE TABLE enrollment_keys (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    note        TEXT,
    uses        INTEGER NOT NULL CHECK (uses > 0),
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0 AND uses_left <= uses),
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    revoked_at  TEXT
);
INSERT INTO enrollment_keys (id, token_hash, uses, uses_left, created_at, expires_at)
SELECT 'ek_' || substr(token_hash, 1, 12), token_hash, 1,
       CASE WHEN used_at IS NULL THEN 1 ELSE 0 END, created_at, expires_at
FROM enrollment_tokens;
DROP TABLE enrollment_tokens;

-- The device inventory: what each agent reported, and revocation.
ALTER TABLE devices ADD COLUMN platform TEXT;
ALTER TABLE devices ADD COLUMN agent_version TEXT;
ALTER TABLE devices ADD COLUMN revoked_at TEXT;
ALTER TABLE devices ADD COLUMN enrollment_key TEXT;
