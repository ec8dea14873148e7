-- Console sessions in the database (issue 16): a restart no longer logs admins
-- out, and with PostgreSQL any replica serves a logged-in admin. Only the
-- SHA-256 of the cookie's id is kept.
CREATE TABLE console_sessions (
    id_hash     TEXT PRIMARY KEY,
    csrf        TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
