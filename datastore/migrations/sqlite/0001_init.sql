-- ferrolabel datastore schema, version 1.
--
-- `images` and `labels` mirror the objects of MONAI Label's datastore_v2.json;
-- `label_revisions` is the immutable history of every label file ever saved;
-- `meta` holds small key/value facts (dataset name, hash of the JSON file we last wrote).

CREATE TABLE images (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order, kept on replace
    id         TEXT    NOT NULL UNIQUE,
    ext        TEXT    NOT NULL,
    info       TEXT    NOT NULL,                   -- JSON object
    created_at INTEGER NOT NULL,                   -- epoch seconds
    updated_at INTEGER NOT NULL
);

CREATE TABLE labels (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id   TEXT    NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    tag        TEXT    NOT NULL,
    ext        TEXT    NOT NULL,
    info       TEXT    NOT NULL,                   -- JSON object
    rev        INTEGER,                            -- revision now served; NULL when never revisioned
    deleted    INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    UNIQUE (image_id, tag)
);

CREATE INDEX labels_tag ON labels(tag) WHERE deleted = 0;

-- No foreign key to images: history outlives the removal of an image.
CREATE TABLE label_revisions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id   TEXT    NOT NULL,
    tag        TEXT    NOT NULL,
    rev        INTEGER NOT NULL,
    parent_rev INTEGER,
    author     TEXT,
    created_at INTEGER NOT NULL,
    sha256     TEXT    NOT NULL,
    ext        TEXT    NOT NULL,
    path       TEXT    NOT NULL,                   -- relative to the studies folder
    info       TEXT    NOT NULL,                   -- JSON object
    UNIQUE (image_id, tag, rev)
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
