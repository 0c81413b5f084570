-- The CRC-32 of each stored file (zip archives name it before the data); NULL for files
-- stored before this version.
ALTER TABLE instances ADD COLUMN crc32 BIGINT;

-- Zip uploads of the fast API (gateway/services/uploads.py): one row per upload, one per
-- entry of each archive received into it (its outcome), and the upload's event log (what
-- its Server-Sent Events stream sends, from any gateway process). Times are milliseconds
-- since the epoch.
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    clinic_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    client TEXT,
    expected_study TEXT,
    expected_instances INTEGER,
    bytes_received BIGINT NOT NULL DEFAULT 0,
    parts INTEGER NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX uploads_by_clinic ON uploads (clinic_id, created_at);

CREATE TABLE upload_entries (
    id INTEGER PRIMARY KEY,
    upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    part INTEGER NOT NULL,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    sha256 TEXT,
    reason TEXT,
    code INTEGER,
    sop_uid TEXT,
    study_uid TEXT,
    series_uid TEXT,
    blob_key TEXT,
    archive_offset BIGINT,
    at BIGINT NOT NULL
);
CREATE INDEX upload_entries_by_upload ON upload_entries (upload_id, id);

CREATE TABLE upload_events (
    id INTEGER PRIMARY KEY,
    upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX upload_events_by_upload ON upload_events (upload_id, id);
