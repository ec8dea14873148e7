-- The users each device spoke for (claims, user checks) per day in the
-- tenant's time zone: a device that speaks for more people in a day than
-- policy.device_users_alert raises a device_users notice, once that day.
-- Days older than yesterday are pruned by the periodic tick.
CREATE TABLE device_user_days (
    device_id TEXT NOT NULL,
    day       INTEGER NOT NULL,
    user      TEXT NOT NULL,
    PRIMARY KEY (device_id, day, user)
) WITHOUT ROWID;

-- The (device, day) pairs that already raised their notice: once a day, even if
-- the alert is lowered while the day runs.
CREATE TABLE device_user_alerts (
    device_id TEXT NOT NULL,
    day       INTEGER NOT NULL,
    PRIMARY KEY (device_id, day)
) WITHOUT ROWID;
