-- The hash of the data set without its file meta (group 0002): the same instance sent by
-- STOW-RS (the client's file meta) and by C-STORE (ours) is a duplicate, not a conflict.
ALTER TABLE instances ADD COLUMN dataset_sha256 TEXT;
