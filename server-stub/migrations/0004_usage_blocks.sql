-- The usage rollup keyed by integers, with weeks packed per (user, product).
--
-- A year's report by user read ~400,000 (week, user, product) rows with two
-- text keys each; now it reads one row per (user, product) and block of 64
-- weeks. The rollup is rebuilt from the ledger by the next fold: dropping the
-- meta keys makes it start again from the first charge.
DROP TABLE usage_daily;
DROP TABLE usage_weekly;
DELETE FROM meta WHERE key IN ('rollup.charge_id', 'rollup.timezone');

-- Every (user, product) with usage, once.
CREATE TABLE usage_pairs (
    id       INTEGER PRIMARY KEY,
    user     TEXT NOT NULL,
    product  TEXT NOT NULL,
    UNIQUE (user, product)
);

-- One row per (local day, pair) with a window starting or tokens charged.
CREATE TABLE usage_days (
    day            INTEGER NOT NULL, -- days since the common era, tenant zone
    pair           INTEGER NOT NULL REFERENCES usage_pairs(id),
    windows        INTEGER NOT NULL DEFAULT 0, -- windows that started that day
    token_windows  INTEGER NOT NULL DEFAULT 0, -- of which paid with tokens
    tokens         INTEGER NOT NULL DEFAULT 0, -- tokens charged that day
    PRIMARY KEY (day, pair)
) WITHOUT ROWID;
CREATE INDEX usage_days_pair ON usage_days (pair, day);

-- The same by week (Monday, tenant zone): `weeks` holds 64 weeks from week
-- number 64 * block (week 0 begins 0001-01-01), 10 bytes each: usage days,
-- paid usage days, tokens (u64 little-endian). See store/usage_blocks.rs.
CREATE TABLE usage_weeks (
    block  INTEGER NOT NULL,
    pair   INTEGER NOT NULL REFERENCES usage_pairs(id),
    weeks  BLOB NOT NULL,
    PRIMARY KEY (block, pair)
) WITHOUT ROWID;
