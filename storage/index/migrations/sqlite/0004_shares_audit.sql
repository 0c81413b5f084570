-- Shares (auth/shares.py): a study, or one series of it, of the owning clinic (clinic_id)
-- made visible to a user (of any clinic, or of target_clinic only), another clinic, or whoever
-- holds a link token (only its sha256 is kept). Revoked shares stay as a record (revoked_at).
-- Times are milliseconds since the epoch, computed by the gateway, as in forward_queue.
CREATE TABLE shares (
    id TEXT PRIMARY KEY,
    clinic_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT,
    target_type TEXT NOT NULL,
    target_id TEXT,
    target_clinic TEXT,
    token_hash TEXT UNIQUE,
    permissions TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_by TEXT
);
CREATE INDEX shares_by_target ON shares (target_type, target_id, expires_at);
CREATE INDEX shares_by_owner ON shares (clinic_id, study_uid);

-- The audit log (auth/audit.py): append-only. Rows are only ever inserted; the triggers
-- refuse updates and deletes (purging old rows is a database administrator's act).
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    user_id TEXT,
    clinic_id TEXT,
    resource TEXT NOT NULL DEFAULT '',
    resource_clinic TEXT,
    client TEXT,
    request_id TEXT,
    door TEXT,
    detail TEXT
);
CREATE INDEX audit_by_clinic ON audit_log (clinic_id, id);
CREATE INDEX audit_by_resource_clinic ON audit_log (resource_clinic, id);
CREATE INDEX audit_by_time ON audit_log (at);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
