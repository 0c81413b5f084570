-- Name searches match the alphabetic, ideographic and phonetic groups of a name (an OR of
-- three prefix matches): each group needs its index, or the OR scans every study of the
-- clinic. (PostgreSQL has them since 0001.)
CREATE INDEX studies_by_name_ideo ON studies (clinic_id, patient_name_ideo);
CREATE INDEX studies_by_name_phon ON studies (clinic_id, patient_name_phon);

-- Fixed planner statistics (SQLite's "manual control of query plans using sqlite_stat1"):
-- nobody runs ANALYZE on an embedded index, and without statistics SQLite takes an equality
-- on clinic_id for a selective one, so it walks a whole clinic's studies instead of using the
-- index of a name or an ID. These figures describe the shape of a dental archive (many
-- studies per clinic, few per patient, two series per study, hundreds of instances per
-- series); the planner only compares them, so they hold whatever the archive's size. An
-- ANALYZE replaces them with measured ones.
-- (An ANALYZE limited to a few rows per index creates the statistics table, quickly at any size.)
PRAGMA analysis_limit=100;
ANALYZE;
DELETE FROM sqlite_stat1 WHERE tbl IN ('studies', 'series', 'instances');
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
    ('studies', 'sqlite_autoindex_studies_1', '100000 20000 1'),
    ('studies', 'studies_by_date', '100000 20000 20 2 1'),
    ('studies', 'studies_by_patient_id', '100000 20000 3'),
    ('studies', 'studies_by_accession', '100000 20000 1'),
    ('studies', 'studies_by_name', '100000 20000 10'),
    ('studies', 'studies_by_name_ideo', '100000 20000 10'),
    ('studies', 'studies_by_name_phon', '100000 20000 10'),
    ('series', 'sqlite_autoindex_series_1', '200000 40000 1'),
    ('series', 'series_by_study', '200000 2 1'),
    ('series', 'series_by_modality', '200000 40000 10000'),
    ('instances', 'sqlite_autoindex_instances_1', '50000000 10000000 1'),
    ('instances', 'instances_by_series', '50000000 250 1 1'),
    ('instances', 'instances_by_study', '50000000 500');
ANALYZE sqlite_schema;
