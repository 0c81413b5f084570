-- The share state of image metadata records, mirrored from the share store
-- (gateway/services/metadata.py): share is the JSON {"targets": [...]} of the active shares
-- of the record's study or series when it was mirrored, shared_until the latest of their
-- expiries (NULL while not shared; a search of shared records compares it with the time of
-- the search, so an expired share is not reported), share_stamp orders the mirror writes (a
-- later one wins). They are no part of the versioned record: record writes leave them as
-- they are, and mirror writes change nothing else (not the version).
ALTER TABLE metadata_records ADD COLUMN share TEXT;
ALTER TABLE metadata_records ADD COLUMN share_stamp BIGINT NOT NULL DEFAULT 0;
ALTER TABLE metadata_records ADD COLUMN shared_until BIGINT;
-- Only shared records are in it (partial index): the shared-state search reads only those.
CREATE INDEX metadata_shared ON metadata_records (clinic_id, shared_until) WHERE shared_until IS NOT NULL;
