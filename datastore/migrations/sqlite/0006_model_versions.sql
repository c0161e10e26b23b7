-- ferrolabel datastore schema, version 6: model versions with provenance.
--
-- One row per distinct weights file that became active for a model and resolution (an upload,
-- a training's better checkpoint, a torchrun training, or a file found in place). The file
-- itself is kept content-addressed at `<bundle>/models/versions/<sha256>.<ext>`; the bundle's
-- `models/model.pt` (what the engine loads) is a copy of the active version. The file decides
-- which version is active: `active` is brought in line with it at every read.
-- All times are epoch milliseconds.

CREATE TABLE model_versions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    model        TEXT    NOT NULL,              -- wholeBody_ct_segmentation
    resolution   TEXT    NOT NULL,              -- highres (model.pt) or lowres (model_lowres.pt)
    version      INTEGER NOT NULL,              -- 1, 2, ... per (model, resolution)
    sha256       TEXT    NOT NULL,              -- hex SHA-256 of the weights file
    ext          TEXT    NOT NULL,              -- pt or safetensors
    size         INTEGER NOT NULL,              -- bytes
    parent       INTEGER,                       -- the version active when this one was made
    source       TEXT    NOT NULL,              -- initial, external, upload, train, torchrun
    job_id       TEXT,                          -- the training job that made it
    username     TEXT,                          -- who uploaded it / started the job
    trained_on   TEXT    NOT NULL DEFAULT '[]', -- JSON [{"image", "rev"}]: final labels trained on
    metrics      TEXT    NOT NULL DEFAULT '{}', -- JSON {"best_metric", "best_epoch", ...}
    created_at   INTEGER NOT NULL,
    activated_at INTEGER,                       -- last time it became active
    active       INTEGER NOT NULL DEFAULT 0,    -- 1 for the version model.pt holds
    pruned_at    INTEGER,                       -- its file was removed by the retention policy
    UNIQUE (model, resolution, version),
    UNIQUE (model, resolution, sha256)
);
