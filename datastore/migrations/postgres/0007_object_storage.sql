-- ferrolabel datastore schema, version 7: object storage (`--storage-url s3://...`).
--
-- With object storage, the content of an image, a label and a label revision is a blob named by
-- its SHA-256 (`<prefix>/sha256/<hex>` in the bucket; label_revisions.sha256 already names it).
-- NULL: the content is the file in the studies folder (no object storage, or saved before it
-- was configured, or found in the folder by the scan).

ALTER TABLE images ADD COLUMN sha256 TEXT;
ALTER TABLE labels ADD COLUMN sha256 TEXT;
