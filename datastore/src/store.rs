//! The [`Datastore`] handle: opening the database, locks, paths and the JSON mirror.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::{Executor, Row};
use tokio::sync::RwLock;

use crate::blocking::blocking;
use crate::error::{DatastoreError, IoContext, Result};
use crate::files;
use crate::ids::{FINAL_TAG, ORIGINAL_TAG};
use crate::locks::{KeyLocks, PgLock};
use crate::monai_json;

/// The MONAI Label datastore model file inside the studies folder.
pub const DATASTORE_JSON: &str = "datastore_v2.json";

/// Our private folder inside the studies folder (database, label revisions).
pub const PRIVATE_DIR: &str = ".ferrolabel";

/// How long after a committed change the JSON mirror is rewritten (changes in between share
/// the rewrite).
pub const JSON_MIRROR_DELAY: Duration = Duration::from_millis(200);

/// Which database engine a [`Datastore`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (the default; one machine).
    Sqlite,
    /// A PostgreSQL server (several servers and workers may share it).
    Postgres,
}

impl Backend {
    /// The backend a database URL names: `postgres://` / `postgresql://` → PostgreSQL,
    /// `sqlite:` → SQLite; anything else is [`DatastoreError::Invalid`].
    pub fn of_url(url: &str) -> Result<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(DatastoreError::Invalid(
                "datastore URL must start with postgres://, postgresql:// or sqlite:".into(),
            ))
        }
    }
}

/// How a [`Datastore`] is opened.
#[derive(Debug, Clone)]
pub struct DatastoreOptions {
    /// The database: `None` → SQLite at [`DatastoreOptions::db_path`] (the default);
    /// `postgres://user@host/db` → PostgreSQL (`db_path` is then unused); `sqlite://<path>`
    /// → that SQLite file.
    pub url: Option<String>,
    /// Where the SQLite file lives; `None` → `<studies>/.ferrolabel/datastore.db`.
    pub db_path: Option<PathBuf>,
    /// Image/label extensions the folder scan recognises, e.g. `.nii.gz`.
    pub extensions: Vec<String>,
    /// How long a connection waits for a lock held by another writer.
    pub busy_timeout: Duration,
    /// Size of the connection pool.
    pub max_connections: u32,
    /// Object storage for the content of images, labels and revisions (`s3://...`, see
    /// [`crate::objects`]); `None` → files in the studies folder (the default).
    pub storage: Option<crate::objects::StorageOptions>,
}

impl Default for DatastoreOptions {
    fn default() -> Self {
        Self {
            url: None,
            db_path: None,
            extensions: crate::ids::DEFAULT_EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            busy_timeout: Duration::from_secs(30),
            max_connections: 8,
            storage: None,
        }
    }
}

/// The label store of one studies folder. Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct Datastore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Datastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datastore")
            .field("studies", &self.inner.studies)
            .field("backend", &self.inner.backend)
            .field("db_path", &self.inner.db_path)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    pub(crate) studies: PathBuf,
    pub(crate) db_path: PathBuf,
    pub(crate) extensions: Vec<String>,
    /// Held shared by every operation and exclusively by `refresh`, so a scan never sees a
    /// half-done write (file renamed, row not yet committed).
    pub(crate) scan_lock: Arc<RwLock<()>>,
    /// Per-image locks: shared for label writes, exclusive for image writes.
    pub(crate) image_locks: KeyLocks,
    /// Per-(image, tag) locks serialising label saves.
    pub(crate) label_locks: KeyLocks,
    /// Bumped after every committed change; the JSON mirror records which one it wrote.
    generation: AtomicU64,
    json_written: tokio::sync::Mutex<u64>,
    /// Set while a background rewrite of the JSON mirror is scheduled and not yet started.
    json_scheduled: AtomicBool,
    /// Where remote images are made local (see [`crate::remote`]).
    pub(crate) remote: std::sync::OnceLock<Arc<dyn crate::remote::RemoteSource>>,
    /// The object storage of files' content, if configured (see [`crate::objects`]).
    pub(crate) objects: Option<crate::objects::Objects>,
}

/// Epoch seconds now.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Parses an info column.
pub(crate) fn parse_info(s: &str) -> Result<Map<String, Value>> {
    Ok(serde_json::from_str(s)?)
}

impl Datastore {
    /// Opens (creating if needed) the studies folder and its database, imports a MONAI Label
    /// `datastore_v2.json` if one is there, registers files added while the server was stopped,
    /// and rewrites the JSON mirror.
    ///
    /// Creates `<studies>`, `labels/final`, `labels/original` and `.ferrolabel/`; deletes leftover
    /// `.*.tmp` files from interrupted writes. A malformed `datastore_v2.json` is an error
    /// ([`DatastoreError::MalformedJson`]) naming the file.
    #[tracing::instrument(skip(opts), fields(studies = %studies.display()))]
    pub async fn open(studies: &Path, opts: DatastoreOptions) -> Result<Datastore> {
        for ext in &opts.extensions {
            crate::ids::validate_ext(ext)?;
        }
        let dirs = [
            studies.to_path_buf(),
            studies.join("labels").join(FINAL_TAG),
            studies.join("labels").join(ORIGINAL_TAG),
            studies.join(PRIVATE_DIR).join("revisions"),
        ];
        let root = studies.to_path_buf();
        let studies = blocking(move || -> Result<_> {
            for d in &dirs {
                files::create_dir_durable(d)?;
            }
            std::fs::canonicalize(&root).at(&root)
        })
        .await?;

        let db_path = match opts.url.as_deref().and_then(sqlite_path_of_url) {
            Some(path) => path,
            None => opts
                .db_path
                .clone()
                .unwrap_or_else(|| studies.join(PRIVATE_DIR).join("datastore.db")),
        };
        if let Some(dir) = db_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let dir = dir.to_path_buf();
            blocking(move || files::create_dir_durable(&dir)).await?;
        }
        let (backend, url) = match opts.url.as_deref().map(|u| (Backend::of_url(u), u)) {
            Some((Ok(Backend::Postgres), url)) => (Backend::Postgres, url.to_string()),
            Some((Err(e), _)) => return Err(e),
            _ => (Backend::Sqlite, sqlite_url(&db_path)),
        };
        let objects = match &opts.storage {
            Some(storage) => {
                let objects = crate::objects::Objects::open(storage, &studies).await?;
                objects.check().await?;
                Some(objects)
            }
            None => None,
        };
        let pool = connect(backend, &url, &opts).await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }

        let ds = Datastore {
            inner: Arc::new(Inner {
                pool,
                backend,
                studies,
                db_path,
                extensions: opts.extensions,
                scan_lock: Arc::default(),
                image_locks: KeyLocks::default(),
                label_locks: KeyLocks::default(),
                generation: AtomicU64::new(1),
                json_written: tokio::sync::Mutex::new(0),
                json_scheduled: AtomicBool::new(false),
                remote: std::sync::OnceLock::new(),
                objects,
            }),
        };
        {
            let _scan = ds.inner.scan_lock.clone().write_owned().await;
            // Other servers on the same folder: none is writing while their temp files go.
            let _other_servers = ds
                .pg_locks(&[PgLock::Scan { exclusive: true }, PgLock::Named("json")])
                .await?;
            let s = ds.inner.studies.clone();
            blocking(move || remove_all_temp_files(&s)).await?;
            ds.import_json().await?;
            ds.reconcile().await?;
        }
        ds.try_sync_json().await?;
        tracing::info!(images = ds.list_images().await?.len(), "datastore open");
        Ok(ds)
    }

    /// Re-scans the studies folder (like the scan at open): registers new image and label files,
    /// drops images whose files vanished, marks vanished labels deleted, and records label
    /// revision files left by an interrupted save. Waits for in-flight writes to finish.
    #[tracing::instrument(skip(self))]
    pub async fn refresh(&self) -> Result<()> {
        {
            let _scan = self.inner.scan_lock.clone().write_owned().await;
            let _other_servers = self
                .pg_locks(&[PgLock::Scan { exclusive: true }, PgLock::Named("json")])
                .await?;
            blocking({
                let s = self.inner.studies.clone();
                move || remove_all_temp_files(&s)
            })
            .await?;
            self.reconcile().await?;
        }
        self.sync_json().await;
        Ok(())
    }

    /// The (canonical, absolute) studies folder.
    pub fn studies(&self) -> &Path {
        &self.inner.studies
    }

    /// The SQLite database file (on PostgreSQL: where it would be, unused).
    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// The database engine this datastore runs on.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The object storage URL (`s3://...`) when files' content lives there, else `None`.
    pub fn storage_url(&self) -> Option<&str> {
        self.inner.objects.as_ref().map(|o| o.url())
    }

    /// The keys of every blob in the object storage (`<prefix>/sha256/<hex>`), sorted; empty
    /// without object storage.
    pub async fn storage_keys(&self) -> Result<Vec<String>> {
        match self.objects() {
            Some(o) => o.list().await,
            None => Ok(Vec::new()),
        }
    }

    /// The extensions the folder scan recognises.
    pub fn extensions(&self) -> &[String] {
        &self.inner.extensions
    }

    /// SQLite: runs `PRAGMA integrity_check` and returns its first line (`"ok"` when healthy).
    /// PostgreSQL (which has no such check): `"ok"` once the server answers a query.
    pub async fn integrity_check(&self) -> Result<String> {
        match self.inner.backend {
            Backend::Sqlite => {
                let row = sqlx::query("PRAGMA integrity_check")
                    .fetch_one(&self.inner.pool)
                    .await?;
                Ok(row.try_get::<String, _>(0)?)
            }
            Backend::Postgres => {
                sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
                Ok("ok".into())
            }
        }
    }

    /// Closes the connection pool (waits for connections to be returned). Later calls fail.
    pub async fn close(&self) {
        self.sync_json().await;
        self.inner.pool.close().await;
    }

    // ----- crate-internal helpers -------------------------------------------------------------

    pub(crate) fn objects(&self) -> Option<&crate::objects::Objects> {
        self.inner.objects.as_ref()
    }

    /// Where content is read from: with object storage and a hash, the blob's cache path
    /// (which may not exist yet); else the file in the studies folder.
    pub(crate) fn content_path(
        &self,
        sha: Option<&str>,
        file: impl FnOnce() -> PathBuf,
        ext: &str,
    ) -> PathBuf {
        match (self.objects(), sha) {
            (Some(objects), Some(sha)) => objects.cache_path(sha, ext),
            _ => file(),
        }
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Starts a write transaction. SQLite: `BEGIN IMMEDIATE`, which takes the write lock up
    /// front (no upgrade deadlocks). PostgreSQL: a plain `BEGIN`; callers that need more take
    /// explicit locks inside it.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.inner.backend {
            Backend::Sqlite => self.inner.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.inner.pool.begin().await?,
        })
    }

    pub(crate) fn image_file(&self, id: &str, ext: &str) -> PathBuf {
        self.inner.studies.join(format!("{id}{ext}"))
    }

    pub(crate) fn label_dir(&self, tag: &str) -> PathBuf {
        self.inner.studies.join("labels").join(tag)
    }

    pub(crate) fn label_file(&self, tag: &str, id: &str, ext: &str) -> PathBuf {
        self.label_dir(tag).join(format!("{id}{ext}"))
    }

    /// `.ferrolabel/revisions/<tag>/<id>`, relative to the studies folder.
    pub(crate) fn revision_dir_rel(tag: &str, id: &str) -> PathBuf {
        Path::new(PRIVATE_DIR).join("revisions").join(tag).join(id)
    }

    /// Records that a change was committed and schedules a rewrite of the JSON mirror.
    ///
    /// The rewrite runs in the background, at most one scheduled at a time, after
    /// [`JSON_MIRROR_DELAY`]: the request that made the change does not wait for it, and a burst
    /// of changes costs one rewrite. (Rewriting in the request made every save as slow as
    /// serialising the whole datastore: 0.7-1.4 s per save at 100,000 images.) The database is
    /// the source of truth; a mirror left stale by a crash is rewritten at the next open.
    pub(crate) async fn committed(&self) {
        self.bump();
        if self.inner.json_scheduled.swap(true, Ordering::SeqCst) {
            return; // the scheduled rewrite has not started yet: it will include this change
        }
        let ds = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(JSON_MIRROR_DELAY).await;
            ds.inner.json_scheduled.store(false, Ordering::SeqCst);
            if !ds.inner.pool.is_closed() {
                ds.sync_json().await;
            }
        });
    }

    /// Rewrites `datastore_v2.json` now if a committed change is not in it yet (changes are
    /// otherwise mirrored in the background, see `committed`). For tests and tools that read
    /// the file right after a change; [`Datastore::close`] does it too.
    pub async fn flush_json(&self) -> Result<()> {
        self.try_sync_json().await
    }

    /// Records that a change was committed, without rewriting the JSON mirror yet.
    pub(crate) fn bump(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Rewrites `datastore_v2.json`; a failure is logged, not returned, because the change it
    /// mirrors is already committed to the database (the next write or open retries).
    pub(crate) async fn sync_json(&self) {
        if let Err(e) = self.try_sync_json().await {
            tracing::error!(error = %e, "could not rewrite {DATASTORE_JSON}");
        }
    }

    /// Rewrites the JSON mirror unless a write that already covers the latest change happened.
    /// Concurrent callers coalesce: whoever holds the mutex writes the newest state for all.
    pub(crate) async fn try_sync_json(&self) -> Result<()> {
        let wanted = self.inner.generation.load(Ordering::SeqCst);
        let mut written = self.inner.json_written.lock().await;
        if *written >= wanted {
            return Ok(());
        }
        // Several servers: one writes the file at a time, each from the rows committed when it
        // holds the lock, so the last file written shows every committed change.
        let _other_servers = self.pg_locks(&[PgLock::Named("json")]).await?;
        let snapshot = self.inner.generation.load(Ordering::SeqCst);
        let model = self.datastore_json().await?;
        let bytes = monai_json::to_bytes(&model)?;
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let path = self.inner.studies.join(DATASTORE_JSON);
        blocking(move || files::write_atomic(&path, &bytes)).await?;
        self.set_meta("json_sha256", &sha).await?;
        *written = snapshot;
        Ok(())
    }

    pub(crate) async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.inner.pool)
            .await?)
    }

    pub(crate) async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, $2) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// Fails with [`DatastoreError::NotFound`] unless the image is registered; returns its ext.
    pub(crate) async fn require_image_ext(&self, id: &str) -> Result<String> {
        self.require_image_ext_on(self.pool(), id).await
    }

    /// [`Datastore::require_image_ext`] on a given connection.
    pub(crate) async fn require_image_ext_on<'e, E>(&self, ex: E, id: &str) -> Result<String>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        sqlx::query_scalar::<_, String>("SELECT ext FROM images WHERE id = $1")
            .bind(id)
            .fetch_optional(ex)
            .await?
            .ok_or_else(|| DatastoreError::NotFound(format!("image {id:?}")))
    }

    /// `" FOR UPDATE"` on PostgreSQL (a read-modify-write locks the row it read), `""` on
    /// SQLite (whose `BEGIN IMMEDIATE` already excludes other writers).
    pub(crate) fn for_update(&self) -> &'static str {
        match self.inner.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }
}

/// Connects the pool. SQLite connections get WAL, `synchronous=FULL`, the busy timeout and
/// foreign keys on every connect (the Any driver opens SQLite from a URL, which carries none
/// of these).
async fn connect(backend: Backend, url: &str, opts: &DatastoreOptions) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    // PostgreSQL: the scan and the JSON mirror hold a lock transaction while they work on a
    // second connection, so a pool needs two.
    let min = if backend == Backend::Postgres { 2 } else { 1 };
    let mut pool = AnyPoolOptions::new().max_connections(opts.max_connections.max(min));
    if backend == Backend::Sqlite {
        let busy_ms = opts.busy_timeout.as_millis();
        pool = pool.after_connect(move |conn, _meta| {
            Box::pin(async move {
                let busy = format!("PRAGMA busy_timeout = {busy_ms}");
                conn.execute(busy.as_str()).await?;
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        });
    }
    Ok(pool.connect(url).await?)
}

/// `sqlite://<path>?mode=rwc`, the path percent-encoded (the SQLite driver decodes it).
pub(crate) fn sqlite_url(path: &Path) -> String {
    let mut out = String::from("sqlite://");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str("?mode=rwc");
    out
}

/// The file a `sqlite:` URL names (percent-decoded, query dropped); `None` for other URLs.
fn sqlite_path_of_url(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))?;
    let enc = rest.split(['?', '#']).next().unwrap_or_default().as_bytes();
    let mut bytes = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        let hex = enc
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex
            .filter(|_| enc[i] == b'%')
            .map(|h| u8::from_str_radix(h, 16))
        {
            Some(Ok(b)) => {
                bytes.push(b);
                i += 3;
            }
            _ => {
                bytes.push(enc[i]);
                i += 1;
            }
        }
    }
    Some(PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Deletes `.*.tmp` files in every folder this crate writes to.
fn remove_all_temp_files(studies: &Path) -> Result<usize> {
    let labels = studies.join("labels");
    let revisions = studies.join(PRIVATE_DIR).join("revisions");
    let mut dirs = vec![studies.to_path_buf(), studies.join(PRIVATE_DIR)];
    dirs.push(labels.clone());
    dirs.extend(subdirs(&labels)?);
    dirs.push(revisions.clone());
    for tag_dir in subdirs(&revisions)? {
        dirs.extend(subdirs(&tag_dir)?);
        dirs.push(tag_dir);
    }
    dirs.iter().map(|d| files::remove_temp_files(d)).sum()
}

/// The sub-folders of `dir` (none if it does not exist), sorted.
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(dir),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.at(dir)?;
        if entry.file_type().at(dir)?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}
