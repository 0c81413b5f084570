-- The durable forward queue (gateway/dimse/forwarding.py): one row per instance and
-- destination that is still to be sent (pending) or gave up (failed). Sent rows are
-- deleted. Times are milliseconds since the epoch, computed by the gateway, so that the
-- same statements run on SQLite and PostgreSQL.
CREATE TABLE forward_queue (
    id INTEGER PRIMARY KEY,
    clinic_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    rule TEXT NOT NULL DEFAULT '',
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (clinic_id, destination, sop_uid)
);
CREATE INDEX forward_queue_due ON forward_queue (status, next_attempt_at, id);
