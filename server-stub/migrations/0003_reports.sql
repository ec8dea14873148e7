-- Reports (R10), forecast and notice mail.
--
-- usage_daily is a rollup of the ledger that reports read instead of every
-- window and charge: one row per (local day, user, product), folded in from
-- `charges` after the id in meta 'rollup.charge_id', with days counted in the
-- zone in meta 'rollup.timezone' (rebuilt when the policy's zone changes).
CREATE TABLE usage_daily (
    day            INTEGER NOT NULL, -- days since the common era, tenant zone
    user           TEXT NOT NULL,
    product        TEXT NOT NULL,
    windows        INTEGER NOT NULL DEFAULT 0, -- windows that started that day
    token_windows  INTEGER NOT NULL DEFAULT 0, -- of which paid with tokens
    tokens         INTEGER NOT NULL DEFAULT 0, -- tokens charged that day
    PRIMARY KEY (day, user, product)
) WITHOUT ROWID;
CREATE INDEX usage_daily_user ON usage_daily (user, day);

-- The same by week (Monday, tenant zone), so a year's report reads 52 rows per
-- (user, product) instead of 365; the days at a period's edges come from
-- usage_daily.
CREATE TABLE usage_weekly (
    week        INTEGER NOT NULL, -- day number of the Monday
    user        TEXT NOT NULL,
    product     TEXT NOT NULL,
    usage_days  INTEGER NOT NULL DEFAULT 0,
    token_days  INTEGER NOT NULL DEFAULT 0,
    tokens      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (week, user, product)
) WITHOUT ROWID;

-- The burn rate and the burn-down chart read recent charges by time.
CREATE INDEX charges_created ON charges (created_at);

-- Each admin notice mailed once: a row per notice the mailer has tried.
CREATE TABLE notice_mail (
    notice_id  INTEGER PRIMARY KEY REFERENCES notices(id),
    attempts   INTEGER NOT NULL DEFAULT 0,
    sent_at    TEXT,
    last_error TEXT
);
