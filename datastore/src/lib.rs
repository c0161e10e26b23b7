//! The ferrolabel datastore: the label store (SQLite, or PostgreSQL for several servers) and the
//! MONAI Label studies-folder layout.
//!
//! This crate owns everything persistent about images and labels:
//! * the studies folder in MONAI Label's layout — images at the top level
//!   (`<studies>/<id><ext>`), labels in `<studies>/labels/<tag>/<id><ext>`, and the
//!   `datastore_v2.json` model, which we import at open and rewrite after every change so that
//!   MONAI Label can still open a folder we wrote;
//! * the database, which is the source of truth: by default SQLite at
//!   `<studies>/.ferrolabel/datastore.db` (WAL, `synchronous=FULL`, migrations embedded from
//!   `migrations/sqlite/`), or PostgreSQL when [`DatastoreOptions::url`] is `postgres://...`
//!   (migrations from `migrations/postgres/`: the same versions and tables in its dialect).
//!   Both run through sqlx's `Any` driver with the same SQL (`$N` placeholders, `RETURNING`,
//!   `ON CONFLICT`); [`Datastore::backend`] tells which;
//! * immutable label revisions under `<studies>/.ferrolabel/revisions/<tag>/<id>/<rev><ext>`;
//! * the session store ([`Sessions`]);
//! * the append-only audit log of label and image writes ([`audit`]);
//! * images that live in a PACS and the outbox of what goes back to it ([`remote`]);
//! * optionally, S3-compatible object storage for the content of images, labels and revisions
//!   (blobs named by their SHA-256, a local cache per process: [`objects`]);
//! * the jobs table of the scheduler: queued and running background jobs, their leases,
//!   heartbeats and attempts ([`jobs`]);
//! * model versions with provenance ([`versions`]).
//!
//! It must not depend on torch or on HTTP: the server crate maps [`DatastoreError`] variants to
//! status codes and the protocol's quirks; this crate implements the semantics.
//!
//! # Crash safety
//!
//! Every write follows the same order: temp file in the destination folder → `fsync` →
//! `rename` → `fsync` of the folder → database transaction (see [`files`]). So:
//! * a crash before the rename leaves only a `.*.tmp` file, deleted at the next open;
//! * a crash between the rename and the commit leaves a complete file the database does not
//!   know (or knows with older info); the scan at the next open registers it (see [`reconcile`]),
//!   and a label revision file without a row is recorded as a revision;
//! * deletions remove files first and rows last, so a crash in between is healed by the scan
//!   dropping rows whose files are gone.
//!
//! A reader never sees a torn file: files are only ever replaced by `rename`.
//!
//! # Concurrency
//!
//! [`Datastore`] is `Clone + Send + Sync`. Label saves for the same (image, tag) are serialised
//! by an async mutex (so revision numbers and parent links never race); image writes hold the
//! image exclusively; [`Datastore::refresh`] waits for all writes. Write transactions use
//! `BEGIN IMMEDIATE` on SQLite, and blocking file I/O runs on tokio's blocking pool.
//!
//! Several servers (or workers) on one PostgreSQL database and one studies folder are ordered
//! the same way across processes by transaction-scoped advisory locks, the twins of the
//! in-process ones; a write's transaction is begun before its file write and committed after
//! it (see `locks.rs`).

pub mod error;
pub mod ids;

pub use error::{DatastoreError, Result};
pub use ids::{
    id_from_filename, match_extension, normalize_tag, validate_ext, validate_id,
    validate_session_id, validate_tag, DEFAULT_EXTENSIONS, FINAL_TAG, ORIGINAL_TAG,
};

// Everything below is the store (the default `store` feature); without it only the id/tag/name
// rules and the error type are built (fuzz/).
#[cfg(feature = "store")]
pub mod audit;
#[cfg(feature = "store")]
pub mod blocking;
#[cfg(feature = "store")]
pub mod files;
#[cfg(feature = "store")]
pub mod images;
#[cfg(feature = "store")]
pub mod import;
#[cfg(feature = "store")]
pub mod jobs;
#[cfg(feature = "store")]
pub mod labels;
#[cfg(feature = "store")]
mod locks;
#[cfg(feature = "store")]
mod monai_json;
#[cfg(feature = "store")]
pub mod objects;
#[cfg(feature = "store")]
pub mod reconcile;
#[cfg(feature = "store")]
pub mod remote;
#[cfg(feature = "store")]
pub mod sessions;
#[cfg(feature = "store")]
mod store;
#[cfg(feature = "store")]
pub mod tokens;
#[cfg(feature = "store")]
pub mod versions;

#[cfg(feature = "store")]
pub use audit::{read_audit_log, read_audit_log_url, AuditEntry};
#[cfg(feature = "store")]
pub use blocking::{blocking, TaskFailed};
#[cfg(feature = "store")]
pub use files::Source;
#[cfg(feature = "store")]
pub use images::{DatastoreStatus, ImageRecord};
#[cfg(feature = "store")]
pub use jobs::{Heartbeat, JobOutcome, JobRow, JobState, JobUpdate, NewJob};
#[cfg(feature = "store")]
pub use labels::{LabelRecord, RevisionRecord};
#[cfg(feature = "store")]
pub use monai_json::{DEFAULT_DESCRIPTION, DEFAULT_NAME};
#[cfg(feature = "store")]
pub use objects::{BlobGc, StorageOptions};
#[cfg(feature = "store")]
pub use remote::{OutboxItem, RemoteImage, RemoteSource, SyncStats};
#[cfg(feature = "store")]
pub use sessions::{SessionInfo, Sessions};
#[cfg(feature = "store")]
pub use store::{
    Backend, Datastore, DatastoreOptions, DATASTORE_JSON, JSON_MIRROR_DELAY, PRIVATE_DIR,
};
#[cfg(feature = "store")]
pub use tokens::TokenInfo;
#[cfg(feature = "store")]
pub use versions::{ModelVersion, NewModelVersion, TrainedOn};

#[cfg(all(test, feature = "store"))]
mod send_sync {
    fn check<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn handles_are_send_sync_clone() {
        check::<super::Datastore>();
        check::<super::Sessions>();
    }
}
