-- PostgreSQL mirror of sqlite/0008_annotations.sql.
-- Users, projects, annotations, AI mask groups and masks of the fast API
-- (gateway/services/annotations.py, masks.py). Users are kept per clinic, created or updated
-- from their identity token's claims. Deleting an annotation deletes its mask groups, their
-- masks and their pending uploads (ON DELETE CASCADE); the mask objects in the blob store are
-- deleted by the gateway. JSON values are TEXT; times are milliseconds since the epoch.
CREATE TABLE users (
    clinic_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    username TEXT,
    email TEXT,
    name TEXT,
    organization TEXT,
    department TEXT,
    roles TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (clinic_id, user_id)
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    clinic_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (clinic_id, name)
);

CREATE TABLE annotations (
    id TEXT PRIMARY KEY,
    clinic_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    project_id TEXT REFERENCES projects (id),
    study_uid TEXT NOT NULL,
    series_uid TEXT,
    sop_uid TEXT,
    type TEXT NOT NULL,
    data TEXT,
    measurements TEXT,
    software TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX annotations_by_study ON annotations (clinic_id, study_uid, created_at);
CREATE INDEX annotations_by_project ON annotations (clinic_id, project_id, created_at);
CREATE INDEX annotations_by_user ON annotations (clinic_id, user_id, created_at);
CREATE INDEX annotations_by_time ON annotations (clinic_id, created_at);

CREATE TABLE mask_groups (
    id TEXT PRIMARY KEY,
    clinic_id TEXT NOT NULL,
    annotation_id TEXT NOT NULL REFERENCES annotations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    model_name TEXT,
    model_version TEXT,
    modality TEXT,
    slice_count INTEGER,
    mask_type TEXT NOT NULL DEFAULT 'segmentation',
    description TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX mask_groups_by_annotation ON mask_groups (annotation_id, created_at);

CREATE TABLE mask_uploads (
    group_id TEXT NOT NULL REFERENCES mask_groups (id) ON DELETE CASCADE,
    slice_index INTEGER NOT NULL,
    label TEXT NOT NULL,
    clinic_id TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    sop_uid TEXT,
    expires_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (group_id, slice_index, label)
);

CREATE TABLE masks (
    id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL REFERENCES mask_groups (id) ON DELETE CASCADE,
    clinic_id TEXT NOT NULL,
    annotation_id TEXT NOT NULL,
    slice_index INTEGER NOT NULL,
    label TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    sop_uid TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (group_id, slice_index, label)
);
