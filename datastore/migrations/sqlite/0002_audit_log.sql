-- ferrolabel datastore schema, version 2: the audit log.
--
-- One row per label write / delete and image upload / delete the server was asked to do: who
-- (the authenticated user, or `admin` with authentication off), what (action, image, tag, the
-- request), when (epoch milliseconds) and the HTTP status it got. Append-only: the triggers
-- below refuse UPDATE and DELETE.

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms    INTEGER NOT NULL,                   -- epoch milliseconds
    username TEXT    NOT NULL,                   -- '' when the request carried no valid token
    action   TEXT    NOT NULL,                   -- e.g. label.save, label.delete, image.delete
    image_id TEXT,
    tag      TEXT,
    status   INTEGER NOT NULL,                   -- HTTP status answered
    request  TEXT    NOT NULL                    -- method, path and query as received
);

CREATE INDEX audit_log_image ON audit_log(image_id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
