-- Objects derived from a series (previews, thumbnails, 3D snapshots; plugins/previews): one
-- row per (clinic, series, name), the latest version; the bytes are in the blob store under
-- blob_key. info is the generator's JSON (a preview's geometry header). Times in ms.
CREATE TABLE derived_objects (
    clinic_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    info TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (clinic_id, series_uid, name)
);
CREATE INDEX derived_objects_by_study ON derived_objects (clinic_id, study_uid);
