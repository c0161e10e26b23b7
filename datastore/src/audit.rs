//! The audit log: who asked for which label or image write or delete, when, and what the
//! answer was.
//!
//! Rows live in the `audit_log` table of the datastore database (migration `0002_audit_log`),
//! which triggers (SQLite's, or plpgsql ones on PostgreSQL) make append-only: an `UPDATE` or
//! `DELETE` on it is refused. The server appends one [`AuditEntry`] per audited request after
//! answering it; [`Datastore::audit_log`] reads them back (newest last), and [`read_audit_log`]
//! (a SQLite file, read-only) or [`read_audit_log_url`] (any database URL) do so without
//! opening the datastore, while a server may be running on it.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Executor, Row};

use crate::error::Result;
use crate::store::Datastore;

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Row id (insertion order); 0 for an entry not yet stored.
    pub id: i64,
    /// When, in epoch milliseconds.
    pub ts_ms: i64,
    /// Who: the authenticated user name (`admin` with authentication off, `""` when the request
    /// had no valid token).
    pub username: String,
    /// What: `label.save`, `label.delete`, `label.info`, `image.upload`, `image.delete`,
    /// `image.info`, `infer.label`...
    pub action: String,
    /// The image (and label) id, when the request named one.
    pub image_id: Option<String>,
    /// The label tag, for label actions.
    pub tag: Option<String>,
    /// The HTTP status the request was answered with.
    pub status: u16,
    /// Method, path and query as received.
    pub request: String,
}

impl AuditEntry {
    /// An entry stamped now.
    pub fn now(
        username: impl Into<String>,
        action: impl Into<String>,
        image_id: Option<String>,
        tag: Option<String>,
        status: u16,
        request: impl Into<String>,
    ) -> Self {
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self {
            id: 0,
            ts_ms,
            username: username.into(),
            action: action.into(),
            image_id,
            tag,
            status,
            request: request.into(),
        }
    }
}

impl Datastore {
    /// Appends `entry` to the audit log (its `id` is ignored); returns the new row id.
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit_log (ts_ms, username, action, image_id, tag, status, request) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(entry.ts_ms)
        .bind(&entry.username)
        .bind(&entry.action)
        .bind(&entry.image_id)
        .bind(&entry.tag)
        .bind(i64::from(entry.status))
        .bind(&entry.request)
        .fetch_one(self.pool())
        .await?;
        Ok(id)
    }

    /// The audit log, oldest first: every entry after row `after_id` (0 = from the start), at
    /// most `limit` of them.
    pub async fn audit_log(&self, after_id: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(SELECT)
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(entry_of_row).collect()
    }

    /// The newest `limit` entries of the audit log, newest first (the dashboard's view).
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, ts_ms, username, action, image_id, tag, status, request \
             FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(entry_of_row).collect()
    }
}

const SELECT: &str = "SELECT id, ts_ms, username, action, image_id, tag, status, request \
                      FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2";

fn entry_of_row(r: &AnyRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.try_get("id")?,
        ts_ms: r.try_get("ts_ms")?,
        username: r.try_get("username")?,
        action: r.try_get("action")?,
        image_id: r.try_get("image_id")?,
        tag: r.try_get("tag")?,
        status: r.try_get::<i64, _>("status")?.clamp(0, 999) as u16,
        request: r.try_get("request")?,
    })
}

/// Reads the audit log of the SQLite database file `db` **read-only**, without opening the
/// datastore (safe while a server runs on it): entries after row `after_id`, at most `limit`.
pub async fn read_audit_log(db: &Path, after_id: i64, limit: u32) -> Result<Vec<AuditEntry>> {
    if !db.is_file() {
        return Err(crate::DatastoreError::NotFound(db.display().to_string()));
    }
    let url = crate::store::sqlite_url(db).replace("mode=rwc", "mode=ro");
    read_audit_log_url(&url, after_id, limit).await
}

/// Reads the audit log of the database at `url` (`postgres://...`, or a `sqlite://` URL)
/// without opening the datastore: entries after row `after_id`, at most `limit`. Writes
/// nothing and runs no migration.
pub async fn read_audit_log_url(url: &str, after_id: i64, limit: u32) -> Result<Vec<AuditEntry>> {
    let backend = crate::Backend::of_url(url)?;
    sqlx::any::install_default_drivers();
    let mut opts = AnyPoolOptions::new().max_connections(1);
    if backend == crate::Backend::Sqlite {
        opts = opts.after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("PRAGMA busy_timeout = 30000").await?;
                Ok(())
            })
        });
    }
    let pool = opts.connect(url).await?;
    let rows = sqlx::query(SELECT)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&pool)
        .await;
    pool.close().await;
    rows?.iter().map(entry_of_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, DatastoreOptions};

    fn run(body: impl std::future::Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body)
    }

    #[test]
    fn append_read_and_append_only_sqlite() {
        run(append_read_and_append_only(None));
    }

    #[test]
    fn append_read_and_append_only_postgres() {
        let url = ferrolabel_testkit::Postgres::shared().fresh_database();
        run(append_read_and_append_only(Some(url)));
    }

    async fn append_read_and_append_only(url: Option<String>) {
        let dir = tempfile::tempdir().unwrap();
        let opts = DatastoreOptions {
            url: url.clone(),
            ..DatastoreOptions::default()
        };
        let ds = Datastore::open(dir.path(), opts).await.unwrap();
        let a = AuditEntry::now(
            "alice",
            "label.save",
            Some("ct1".into()),
            Some("final".into()),
            200,
            "PUT /datastore/label?image=ct1",
        );
        let b = AuditEntry::now(
            "",
            "image.delete",
            None,
            None,
            401,
            "DELETE /datastore/image",
        );
        let ida = ds.append_audit(&a).await.unwrap();
        let idb = ds.append_audit(&b).await.unwrap();
        assert!(idb > ida);
        let all = ds.audit_log(0, 100).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], AuditEntry { id: ida, ..a });
        assert_eq!(all[1].username, "");
        assert_eq!(all[1].status, 401);
        assert_eq!(ds.audit_log(ida, 100).await.unwrap().len(), 1);
        let recent = ds.recent_audit(1).await.unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].id, idb);
        assert_eq!(ds.recent_audit(10).await.unwrap()[1].id, ida);

        // the triggers keep the table append-only
        let upd = sqlx::query("UPDATE audit_log SET username = 'mallory'")
            .execute(ds.pool())
            .await;
        assert!(upd.unwrap_err().to_string().contains("append-only"));
        let del = sqlx::query("DELETE FROM audit_log")
            .execute(ds.pool())
            .await;
        assert!(del.unwrap_err().to_string().contains("append-only"));
        if ds.backend() == Backend::Postgres {
            let trunc = sqlx::query("TRUNCATE audit_log").execute(ds.pool()).await;
            assert!(trunc.unwrap_err().to_string().contains("append-only"));
        }
        assert_eq!(ds.audit_log(0, 100).await.unwrap().len(), 2);
        // the reader that opens no datastore sees the same rows while the datastore is open
        let ro = match &url {
            None => read_audit_log(ds.db_path(), 0, 100).await.unwrap(),
            Some(url) => read_audit_log_url(url, 0, 100).await.unwrap(),
        };
        assert_eq!(ro, ds.audit_log(0, 100).await.unwrap());
        assert!(read_audit_log(&dir.path().join("none.db"), 0, 1)
            .await
            .is_err());
        ds.close().await;
    }
}
