-- Studies carry their patient's attributes (as received with the study's first
-- instance); the patients view groups them for patient-level queries.
CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    clinic_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    patient_id TEXT,
    patient_name TEXT,
    patient_name_alpha TEXT NOT NULL DEFAULT '',
    patient_name_ideo TEXT NOT NULL DEFAULT '',
    patient_name_phon TEXT NOT NULL DEFAULT '',
    patient_birth_date TEXT,
    patient_sex TEXT,
    study_date TEXT,
    study_time TEXT,
    accession_number TEXT,
    referring_physician_name TEXT,
    referring_physician_name_alpha TEXT NOT NULL DEFAULT '',
    referring_physician_name_ideo TEXT NOT NULL DEFAULT '',
    referring_physician_name_phon TEXT NOT NULL DEFAULT '',
    study_id TEXT,
    study_description TEXT,
    modalities TEXT NOT NULL DEFAULT '',
    num_series INTEGER NOT NULL DEFAULT 0,
    num_instances INTEGER NOT NULL DEFAULT 0,
    study_json TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (clinic_id, study_uid)
);
-- The default study list: newest first, studies without a date last.
CREATE INDEX studies_by_date ON studies (clinic_id, study_date DESC, study_time DESC, id DESC);
CREATE INDEX studies_by_patient_id ON studies (clinic_id, patient_id);
CREATE INDEX studies_by_accession ON studies (clinic_id, accession_number);
CREATE INDEX studies_by_name ON studies (clinic_id, patient_name_alpha);

CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    study_pk INTEGER NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    clinic_id TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT,
    series_number INTEGER,
    series_description TEXT,
    body_part_examined TEXT,
    series_date TEXT,
    series_time TEXT,
    pps_start_date TEXT,
    pps_start_time TEXT,
    num_instances INTEGER NOT NULL DEFAULT 0,
    series_json TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (clinic_id, series_uid)
);
CREATE INDEX series_by_study ON series (study_pk, series_number);
CREATE INDEX series_by_modality ON series (clinic_id, modality);

CREATE TABLE instances (
    id INTEGER PRIMARY KEY,
    series_pk INTEGER NOT NULL REFERENCES series (id) ON DELETE CASCADE,
    study_pk INTEGER NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    clinic_id TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    rows INTEGER,
    columns INTEGER,
    bits_allocated INTEGER,
    number_of_frames INTEGER,
    content_date TEXT,
    content_time TEXT,
    transfer_syntax TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    frame_index TEXT,
    header_json TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (clinic_id, sop_uid)
);
CREATE INDEX instances_by_series ON instances (series_pk, instance_number, id);
CREATE INDEX instances_by_study ON instances (study_pk);

CREATE VIEW patients AS
SELECT clinic_id, patient_id, max(patient_name) AS patient_name,
       max(patient_birth_date) AS patient_birth_date, max(patient_sex) AS patient_sex,
       count(*) AS num_studies, sum(num_series) AS num_series, sum(num_instances) AS num_instances
FROM studies GROUP BY clinic_id, patient_id;
