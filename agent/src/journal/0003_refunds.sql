-- Journal schema v3: refunds of windows no process used past the short-use
-- grace (R13), journaled before they are asked and deleted once answered, so a
-- refund is asked again after a crash and applied at most once (the server
-- answers a repeat as it answered the first).
CREATE TABLE pending_refunds (
    window_id TEXT PRIMARY KEY,
    user      TEXT NOT NULL,
    product   TEXT NOT NULL,
    account   TEXT,
    created   TEXT NOT NULL
);
