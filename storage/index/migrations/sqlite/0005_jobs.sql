-- The durable job queue (gateway/jobs/): one row per job still to run (pending; running
-- while a worker holds its lease) or dead-lettered (failed). Done jobs are deleted.
-- (kind, clinic_id, key) is the idempotency key: enqueuing it again updates the row and
-- bumps its generation. Payload and progress are JSON text. Times are milliseconds since
-- the epoch, computed by the gateway, so that the same statements run on SQLite and
-- PostgreSQL. The forward queue of 0002 becomes jobs of kind 'forward'.
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    clinic_id TEXT NOT NULL DEFAULT '',
    key TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 1,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    progress TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (kind, clinic_id, key)
);
CREATE INDEX jobs_due ON jobs (status, kind, next_attempt_at, id);
CREATE INDEX jobs_by_lease_owner ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;
INSERT INTO jobs (kind, clinic_id, key, payload, status, attempts, next_attempt_at, last_error, created_at,
                  updated_at)
SELECT 'forward', clinic_id, destination || '/' || sop_uid,
       json_object('destination', destination, 'study_uid', study_uid, 'series_uid', series_uid, 'sop_uid', sop_uid,
                   'rule', rule),
       status, attempts, next_attempt_at, last_error, created_at, updated_at
FROM forward_queue ORDER BY id;
DROP TABLE forward_queue;
