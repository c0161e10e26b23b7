-- ferrolabel datastore schema, version 8: blobs named outside the image, label and model version
-- tables (object storage, `--storage-url s3://...`).
--
-- A session's uploaded files (kind `session`, owner: the session id, name: the file name), the
-- DICOM source of an image (kind `dicom_source`, owner: the image id) and the resume state of a
-- training (kind `resume`, owner: the checkpoint's name) are blobs named by their SHA-256 like
-- the rest; these rows are what lets any process find them, and what `ferrolabel storage gc`
-- keeps. `info`: JSON of the owner (a session's metadata). Times are epoch seconds.

CREATE TABLE blob_refs (
    kind       TEXT   NOT NULL,
    owner      TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    sha256     TEXT   NOT NULL,
    info       TEXT   NOT NULL DEFAULT '{}',
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, owner, name)
);
