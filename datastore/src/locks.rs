//! Locks of write operations: in-process ones and, on PostgreSQL, their cross-server twins.
//!
//! In one process, tokio locks order the writes (see the crate docs): the scan lock (shared by
//! every write, exclusive for the folder scan), a per-image lock (shared by label writes,
//! exclusive for image writes) and a per-(image, tag) lock serialising label saves.
//!
//! Several servers on one PostgreSQL database and one studies folder need the same order
//! between processes: each lock has a transaction-scoped advisory lock twin
//! (`pg_advisory_xact_lock[_shared](hashtextextended(key, 0))`, per database), taken in the
//! same order (scan, image, label), inside the write's own transaction. That transaction
//! ([`Held`]) is begun *before* the file write and committed after it, so a second server
//! reads the revision numbers and rows only once the first one's files and rows are both in
//! place. On SQLite, [`Held`] is one pooled connection on which the write later runs
//! `BEGIN IMMEDIATE`, as before.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::AnyConnection;
use sqlx::{Any, Connection, Transaction};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::error::Result;
use crate::store::{Backend, Datastore};

/// Named in-process locks, created on demand and dropped when unused.
#[derive(Default)]
pub(crate) struct KeyLocks(std::sync::Mutex<HashMap<String, Arc<RwLock<()>>>>);

impl KeyLocks {
    fn get(&self, key: &str) -> Arc<RwLock<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 1024 {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(key.to_string()).or_default().clone()
    }
}

/// In-process locks held for the duration of one write operation.
pub(crate) struct Guards {
    _scan: OwnedRwLockReadGuard<()>,
    _image_shared: Option<OwnedRwLockReadGuard<()>>,
    _image_exclusive: Option<OwnedRwLockWriteGuard<()>>,
    _label: Option<OwnedRwLockWriteGuard<()>>,
}

/// A cross-server lock (PostgreSQL advisory lock, released at the end of the transaction).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PgLock<'a> {
    /// Any write (shared) against the folder scan (exclusive).
    Scan { exclusive: bool },
    /// An image: shared by its label writes, exclusive for its own writes.
    Image { id: &'a str, exclusive: bool },
    /// One (image, tag): label saves and removals.
    Label { id: &'a str, tag: &'a str },
    /// Anything else that one server at a time must do (e.g. `json`, `remote_sync`).
    Named(&'a str),
    /// Blob garbage collection (exclusive) against saves that may name a blob (shared, taken
    /// last, from before the blob's `HEAD` until the row is committed: `objects_gc.rs`).
    Gc { exclusive: bool },
}

impl PgLock<'_> {
    fn key_and_mode(&self) -> (String, bool) {
        match *self {
            PgLock::Scan { exclusive } => ("ferrolabel:scan".into(), exclusive),
            PgLock::Image { id, exclusive } => (format!("ferrolabel:image:{id}"), exclusive),
            // ids and tags never contain '/' (see `ids`)
            PgLock::Label { id, tag } => (format!("ferrolabel:label:{id}/{tag}"), true),
            PgLock::Named(name) => (format!("ferrolabel:{name}"), true),
            PgLock::Gc { exclusive } => ("ferrolabel:blob-gc".into(), exclusive),
        }
    }
}

/// Takes `lock` in the transaction open on `conn` (PostgreSQL only).
pub(crate) async fn pg_lock(conn: &mut AnyConnection, lock: PgLock<'_>) -> Result<()> {
    let (key, exclusive) = lock.key_and_mode();
    let sql = if exclusive {
        "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS l"
    } else {
        "SELECT 1 FROM (SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))) AS l"
    };
    sqlx::query(sql).bind(key).execute(conn).await?;
    Ok(())
}

/// The connection of one write operation that touches files (see the module docs).
pub(crate) enum Held {
    /// SQLite: a pooled connection; [`Held::write`] runs `BEGIN IMMEDIATE` on it.
    Sqlite(PoolConnection<Any>),
    /// PostgreSQL: an open transaction holding the advisory locks; [`Held::write`] is a
    /// savepoint in it and [`Held::finish`] commits it.
    Postgres(Transaction<'static, Any>),
}

impl Held {
    /// The connection, for reads made under the locks.
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        match self {
            Held::Sqlite(c) => c,
            Held::Postgres(t) => t,
        }
    }

    /// Starts the write transaction of the operation (commit it, then call [`Held::finish`]).
    pub(crate) async fn write(&mut self) -> Result<Transaction<'_, Any>> {
        Ok(match self {
            Held::Sqlite(c) => c.begin_with("BEGIN IMMEDIATE").await?,
            Held::Postgres(t) => t.begin().await?,
        })
    }

    /// Ends the operation: commits the PostgreSQL transaction (releasing its locks).
    pub(crate) async fn finish(self) -> Result<()> {
        match self {
            Held::Sqlite(c) => drop(c),
            Held::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}

impl Datastore {
    /// Holds off the folder scan (shared) for a write that touches no file.
    pub(crate) async fn lock_scan_shared(&self) -> OwnedRwLockReadGuard<()> {
        self.inner.scan_lock.clone().read_owned().await
    }

    /// In-process locks of an image write (exclusive on the image).
    pub(crate) async fn lock_image(&self, id: &str) -> Guards {
        let scan = self.inner.scan_lock.clone().read_owned().await;
        let image = self.inner.image_locks.get(id).write_owned().await;
        Guards {
            _scan: scan,
            _image_shared: None,
            _image_exclusive: Some(image),
            _label: None,
        }
    }

    /// In-process locks of a label write (shared on the image, exclusive on the label).
    pub(crate) async fn lock_label(&self, id: &str, tag: &str) -> Guards {
        let scan = self.inner.scan_lock.clone().read_owned().await;
        let image = self.inner.image_locks.get(id).read_owned().await;
        let label = self
            .inner
            .label_locks
            .get(&format!("{id}\0{tag}"))
            .write_owned()
            .await;
        Guards {
            _scan: scan,
            _image_shared: Some(image),
            _image_exclusive: None,
            _label: Some(label),
        }
    }

    /// The connection of an image write, holding on PostgreSQL the scan (shared) and the
    /// image (exclusive) across servers. Call after [`Datastore::lock_image`].
    pub(crate) async fn hold_image(&self, id: &str) -> Result<Held> {
        self.hold(&[
            PgLock::Scan { exclusive: false },
            PgLock::Image {
                id,
                exclusive: true,
            },
        ])
        .await
    }

    /// The connection of a label write, holding on PostgreSQL the scan and the image (shared)
    /// and the label (exclusive) across servers. Call after [`Datastore::lock_label`].
    pub(crate) async fn hold_label(&self, id: &str, tag: &str) -> Result<Held> {
        self.hold(&[
            PgLock::Scan { exclusive: false },
            PgLock::Image {
                id,
                exclusive: false,
            },
            PgLock::Label { id, tag },
        ])
        .await
    }

    async fn hold(&self, locks: &[PgLock<'_>]) -> Result<Held> {
        match self.backend() {
            Backend::Sqlite => Ok(Held::Sqlite(self.pool().acquire().await?)),
            Backend::Postgres => {
                let mut tx = self.pool().begin().await?;
                for lock in locks {
                    pg_lock(&mut tx, *lock).await?;
                }
                // the save may name a blob that exists already: no collection deletes it
                // until the row is committed (taken last: a collection holds nothing else)
                if self.objects().is_some() {
                    pg_lock(&mut tx, PgLock::Gc { exclusive: false }).await?;
                }
                Ok(Held::Postgres(tx))
            }
        }
    }

    /// A transaction that only holds `locks` across servers until dropped or committed
    /// (PostgreSQL); `None` on SQLite. For operations already exclusive in this process (the
    /// folder scan, the JSON mirror), which may then use other pooled connections.
    pub(crate) async fn pg_locks(
        &self,
        locks: &[PgLock<'_>],
    ) -> Result<Option<Transaction<'static, Any>>> {
        if self.backend() == Backend::Sqlite {
            return Ok(None);
        }
        let mut tx = self.pool().begin().await?;
        for lock in locks {
            pg_lock(&mut tx, *lock).await?;
        }
        Ok(Some(tx))
    }

    /// In a write transaction: takes `lock` on PostgreSQL, nothing on SQLite (where the
    /// transaction's `BEGIN IMMEDIATE` already serialises writers).
    pub(crate) async fn lock_in(&self, conn: &mut AnyConnection, lock: PgLock<'_>) -> Result<()> {
        if self.backend() == Backend::Postgres {
            pg_lock(conn, lock).await?;
        }
        Ok(())
    }
}
