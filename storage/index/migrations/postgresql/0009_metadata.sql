-- Image metadata (storage/index/metadata.py): one row per image object of a clinic (study,
-- series, instance, variant), its current version; every version, the current one too, in
-- metadata_history; the record's tags in metadata_tags (searched by tag). body is the
-- record's JSON (storage.metadata.MetadataRecord.body). Writes are conditional on version
-- (UPDATE ... WHERE version = ?) in one transaction with their history row.
-- Times are milliseconds since the epoch, computed by the gateway.
CREATE TABLE metadata_records (
    clinic_id TEXT COLLATE "C" NOT NULL,
    study_uid TEXT COLLATE "C" NOT NULL,
    series_uid TEXT COLLATE "C" NOT NULL,
    sop_uid TEXT COLLATE "C" NOT NULL,
    variant TEXT COLLATE "C" NOT NULL,
    version INTEGER NOT NULL,
    patient_id TEXT COLLATE "C",
    study_date TEXT COLLATE "C",
    updated_at BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (clinic_id, study_uid, series_uid, sop_uid, variant)
);
CREATE INDEX metadata_by_date ON metadata_records (clinic_id, study_date);
CREATE INDEX metadata_by_patient ON metadata_records (clinic_id, patient_id, study_date);

CREATE TABLE metadata_history (
    clinic_id TEXT COLLATE "C" NOT NULL,
    study_uid TEXT COLLATE "C" NOT NULL,
    series_uid TEXT COLLATE "C" NOT NULL,
    sop_uid TEXT COLLATE "C" NOT NULL,
    variant TEXT COLLATE "C" NOT NULL,
    version INTEGER NOT NULL,
    updated_at BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (clinic_id, study_uid, series_uid, sop_uid, variant, version)
);

CREATE TABLE metadata_tags (
    clinic_id TEXT COLLATE "C" NOT NULL,
    tag TEXT COLLATE "C" NOT NULL,
    study_uid TEXT COLLATE "C" NOT NULL,
    series_uid TEXT COLLATE "C" NOT NULL,
    sop_uid TEXT COLLATE "C" NOT NULL,
    variant TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (clinic_id, tag, study_uid, series_uid, sop_uid, variant)
);
CREATE INDEX metadata_tags_by_record ON metadata_tags (clinic_id, study_uid, series_uid, sop_uid, variant);
