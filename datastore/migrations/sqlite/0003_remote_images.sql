-- ferrolabel datastore schema, version 3: images that live in a PACS, and the outbox of
-- what has to go back to it.
--
-- `images.remote` is NULL for an image file in the studies folder; for an image listed by a
-- remote source (a DICOMweb PACS) it holds a JSON object naming it there (StudyInstanceUID,
-- SeriesInstanceUID, ...). Remote images have no file in the studies folder: the folder scan
-- leaves them alone, and their local copy is made on first use by the server's fetcher.
ALTER TABLE images ADD COLUMN remote TEXT;

-- Work that must reach the remote source, kept until it did (e.g. a `final` label to be
-- stored as a DICOM SEG with STOW-RS). A row is done when `done_at` is set.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL,                   -- e.g. stow_seg
    image_id   TEXT    NOT NULL,
    tag        TEXT    NOT NULL,
    rev        INTEGER,                            -- the label revision to send
    created_at INTEGER NOT NULL,                   -- epoch seconds
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_try   INTEGER,
    done_at    INTEGER,
    result     TEXT                                -- JSON object, when done
);

CREATE INDEX outbox_pending ON outbox(id) WHERE done_at IS NULL;
