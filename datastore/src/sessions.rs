//! The session store (`/session/`): uploaded images kept for a while outside the datastore.
//!
//! Layout: `<root>/<uuid>/meta.info` (one line of JSON, the [`SessionInfo`]) next to the image:
//! the uploaded file under its own (validated) basename, or, for several files (a DICOM series),
//! the folder `<root>/<uuid>/image/` holding them all, which is then the session image.
//! A session is built in a hidden temp folder and renamed into place, so a half-written session
//! is never visible; leftovers are removed at open.
//!
//! With object storage ([`Sessions::shared_through`]) the files are also blobs and the session
//! is recorded in the database, so every server on that database and bucket serves it; the
//! folder is then this server's cache of it (`objects_sessions.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::blocking::blocking;
use crate::error::{DatastoreError, IoContext, Result};
use crate::files::{self, Source};
use crate::ids::{basename, validate_id, validate_session_id};
use crate::store::{now_secs, Datastore};

#[path = "objects_sessions.rs"]
mod shared;

pub use shared::SHARED_MARK;

/// The session metadata file in each session folder.
pub const META_FILE: &str = "meta.info";

/// The folder holding a multi-file session image.
pub const MULTI_FILE_DIR: &str = "image";

/// The expiry used when the configured maximum is 60 seconds or less.
pub const FALLBACK_EXPIRY_SECS: i64 = 3600;

/// What `GET /session/{id}` returns as `session_info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session id (a UUID).
    pub name: String,
    /// The session folder.
    pub path: PathBuf,
    /// The session image: a file, or a folder of files.
    pub image: PathBuf,
    /// Free-form metadata (empty on creation).
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// Epoch seconds when created.
    pub create_ts: i64,
    /// Epoch seconds of the last use with `update_ts`.
    pub last_access_ts: i64,
    /// Seconds after `last_access_ts` when the session expires.
    pub expiry: i64,
}

impl SessionInfo {
    /// True once `last_access_ts + expiry` lies before `now` (epoch seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.last_access_ts.saturating_add(self.expiry) < now
    }
}

/// The session store rooted at one folder. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sessions {
    root: PathBuf,
    max_expiry: i64,
    /// Serialises metadata rewrites against removals.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// With object storage: the datastore recording shared sessions.
    shared: Option<Datastore>,
}

impl Sessions {
    /// Opens (creating if needed) the session folder; removes half-built sessions left by a crash.
    /// A `max_expiry_secs` of 60 or less is replaced by [`FALLBACK_EXPIRY_SECS`].
    #[tracing::instrument(fields(root = %root.display()))]
    pub async fn open(root: &Path, max_expiry_secs: i64) -> Result<Sessions> {
        let root = root.to_path_buf();
        let root = blocking(move || -> Result<_> {
            files::create_dir_durable(&root)?;
            let root = std::fs::canonicalize(&root).at(&root)?;
            files::remove_temp_files(&root)?;
            for entry in std::fs::read_dir(&root).at(&root)? {
                let entry = entry.at(&root)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if files::is_temp_name(&name) && entry.file_type().at(&root)?.is_dir() {
                    tracing::warn!(%name, "removing half-built session");
                    std::fs::remove_dir_all(entry.path()).at(&entry.path())?;
                }
            }
            Ok(root)
        })
        .await?;
        let max_expiry = if max_expiry_secs <= 60 {
            FALLBACK_EXPIRY_SECS
        } else {
            max_expiry_secs
        };
        Ok(Sessions {
            root,
            max_expiry,
            lock: Arc::default(),
            shared: None,
        })
    }

    /// Shares the sessions through `ds`'s object storage (when it has a storage URL; else
    /// nothing changes): new sessions are recorded in its database and their files put in its
    /// bucket, and a session another server created is fetched on first use.
    pub fn shared_through(mut self, ds: &Datastore) -> Sessions {
        if ds.storage_url().is_some() {
            self.shared = Some(ds.clone());
        }
        self
    }

    /// The datastore of shared sessions, if the session folder `dir` is (or would be) one.
    async fn shared_for(&self, dir: &Path) -> Option<&Datastore> {
        let ds = self.shared.as_ref()?;
        let local = tokio::fs::try_exists(dir).await.unwrap_or(false);
        let marked = tokio::fs::try_exists(dir.join(SHARED_MARK))
            .await
            .unwrap_or(false);
        (!local || marked).then_some(ds)
    }

    /// The session folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The largest expiry a session gets, in seconds.
    pub fn max_expiry(&self) -> i64 {
        self.max_expiry
    }

    /// The expiry a session asking for `expiry` seconds gets: the maximum for `expiry <= 0`,
    /// else `min(expiry, max)`.
    pub fn effective_expiry(&self, expiry: i64) -> i64 {
        if expiry <= 0 {
            self.max_expiry
        } else {
            expiry.min(self.max_expiry)
        }
    }

    /// Creates a session from uploaded files `(client file name, content)`.
    ///
    /// File names are reduced to their basename and validated like ids. One file → that file is
    /// the image; several → they all go into one folder, which is the image.
    #[tracing::instrument(skip(self, files), fields(n = files.len()))]
    pub async fn create(&self, files: Vec<(String, Source)>, expiry: i64) -> Result<SessionInfo> {
        if files.is_empty() {
            return Err(DatastoreError::Invalid(
                "a session needs at least one file".into(),
            ));
        }
        let mut named = Vec::with_capacity(files.len());
        for (name, source) in files {
            let base = basename(&name).to_string();
            validate_id(&base)?;
            if base == META_FILE || named.iter().any(|(n, _)| *n == base) {
                return Err(DatastoreError::Invalid(format!(
                    "file name {base:?} is reserved or repeated"
                )));
            }
            named.push((base, source));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let path = self.root.join(&id);
        let image = if named.len() == 1 {
            path.join(&named[0].0)
        } else {
            path.join(MULTI_FILE_DIR)
        };
        let now = now_secs();
        let info = SessionInfo {
            name: id.clone(),
            path: path.clone(),
            image,
            meta: Map::new(),
            create_ts: now,
            last_access_ts: now,
            expiry: self.effective_expiry(expiry),
        };
        let mut line = serde_json::to_vec(&info)?;
        line.push(b'\n');

        let build = files::temp_path(&self.root, &id);
        let build2 = build.clone();
        let single = named.len() == 1;
        let mark = self.shared.is_some();
        let res = blocking(move || {
            std::fs::create_dir(&build2).at(&build2)?;
            let dir = if single {
                build2.clone()
            } else {
                let d = build2.join(MULTI_FILE_DIR);
                std::fs::create_dir(&d).at(&d)?;
                d
            };
            for (name, source) in named {
                let tmp = files::stage(source, &dir, &name)?;
                files::publish(&tmp, &dir.join(&name))?;
            }
            if mark {
                files::write_atomic(&build2.join(SHARED_MARK), b"")?;
            }
            files::write_atomic(&build2.join(META_FILE), &line)
        })
        .await;
        let guard = self.lock.lock().await;
        let res = match res {
            Ok(()) => {
                let (b, p, root) = (build.clone(), path.clone(), self.root.clone());
                blocking(move || {
                    std::fs::rename(&b, &p).at(&p)?;
                    files::fsync_dir(&root)
                })
                .await
            }
            Err(e) => Err(e),
        };
        drop(guard);
        if let Err(e) = res {
            let _ = tokio::fs::remove_dir_all(&build).await;
            return Err(e);
        }
        if let Some(ds) = &self.shared {
            if let Err(e) = shared::record(ds, &info).await {
                let _ = remove_dir(&path).await;
                return Err(e);
            }
        }
        tracing::info!(session = %id, expiry = info.expiry, "session created");
        Ok(info)
    }

    /// The session, if it exists and is alive. An expired session, or one whose image has
    /// vanished, is removed and reported as `None`. With `update_ts`, `last_access_ts` is bumped.
    #[tracing::instrument(skip(self))]
    pub async fn get(&self, id: &str, update_ts: bool) -> Result<Option<SessionInfo>> {
        validate_session_id(id)?;
        let _guard = self.lock.lock().await;
        let dir = self.root.join(id);
        if let Some(ds) = self.shared_for(&dir).await {
            return self.get_shared(ds, &dir, id, update_ts).await;
        }
        let Some(mut info) = self.read_alive(&dir).await? else {
            return Ok(None);
        };
        if update_ts {
            info.last_access_ts = now_secs();
            let mut line = serde_json::to_vec(&info)?;
            line.push(b'\n');
            let meta = dir.join(META_FILE);
            blocking(move || files::write_atomic(&meta, &line)).await?;
        }
        Ok(Some(info))
    }

    /// Removes a session; returns its info, or `None` if it did not exist.
    #[tracing::instrument(skip(self))]
    pub async fn remove(&self, id: &str) -> Result<Option<SessionInfo>> {
        validate_session_id(id)?;
        let _guard = self.lock.lock().await;
        let dir = self.root.join(id);
        let mut info = read_meta(&dir.join(META_FILE)).await.ok().flatten();
        if let Some(ds) = self.shared_for(&dir).await {
            let known = shared::load(ds, &self.root, id).await?;
            shared::forget(ds, id).await?;
            info = known.or(info);
        }
        remove_dir(&dir).await?;
        Ok(info)
    }

    /// [`Sessions::get`] of a shared session: the database's, fetched into the folder if this
    /// server has not got it; expired or removed elsewhere: gone here too.
    async fn get_shared(
        &self,
        ds: &Datastore,
        dir: &Path,
        id: &str,
        update_ts: bool,
    ) -> Result<Option<SessionInfo>> {
        let now = now_secs();
        let mut info = match shared::load(ds, &self.root, id).await? {
            Some(info) if info.is_expired(now) => {
                tracing::info!(session = %id, "session expired");
                shared::forget(ds, id).await?;
                None
            }
            other => other,
        };
        let Some(info) = info.as_mut() else {
            remove_dir(dir).await?;
            return Ok(None);
        };
        // not here yet, or this server's copy lost its image: from the bucket
        if !tokio::fs::try_exists(&info.image).await.unwrap_or(false) {
            remove_dir(dir).await?;
            shared::materialise(ds, &self.root, info).await?;
        }
        if update_ts {
            info.last_access_ts = now;
            shared::touch(ds, info).await?;
            let mut line = serde_json::to_vec(&*info)?;
            line.push(b'\n');
            let meta = dir.join(META_FILE);
            blocking(move || files::write_atomic(&meta, &line)).await?;
        }
        Ok(Some(info.clone()))
    }

    /// Removes every expired or broken session; returns how many were removed.
    #[tracing::instrument(skip(self))]
    pub async fn remove_expired(&self) -> Result<usize> {
        let _guard = self.lock.lock().await;
        let mut n = 0;
        let mut entries = tokio::fs::read_dir(&self.root).await.at(&self.root)?;
        while let Some(entry) = entries.next_entry().await.at(&self.root)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_session_id(&name).is_err() || !entry.path().is_dir() {
                continue;
            }
            if self.shared_for(&entry.path()).await.is_some() {
                continue;
            }
            if self.read_alive(&entry.path()).await?.is_none() {
                n += 1;
            }
        }
        // shared sessions: the database's expiry, for every server
        if let Some(ds) = &self.shared {
            n += shared::sweep(ds).await?;
            let mut entries = tokio::fs::read_dir(&self.root).await.at(&self.root)?;
            while let Some(entry) = entries.next_entry().await.at(&self.root)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if validate_session_id(&name).is_ok()
                    && self.shared_for(&entry.path()).await.is_some()
                    && shared::load(ds, &self.root, &name).await?.is_none()
                {
                    remove_dir(&entry.path()).await?;
                }
            }
        }
        Ok(n)
    }

    /// Reads a session's info; removes the session and answers `None` if it is expired, broken
    /// or lost its image. `None` too when the folder does not exist.
    async fn read_alive(&self, dir: &Path) -> Result<Option<SessionInfo>> {
        if !tokio::fs::try_exists(dir).await.at(dir)? {
            return Ok(None);
        }
        let alive = match read_meta(&dir.join(META_FILE)).await {
            Ok(Some(info)) if info.is_expired(now_secs()) => {
                tracing::info!(session = %info.name, "session expired");
                None
            }
            Ok(Some(info)) if !tokio::fs::try_exists(&info.image).await.unwrap_or(false) => {
                tracing::warn!(session = %info.name, "session image vanished");
                None
            }
            Ok(Some(info)) => Some(info),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "broken session metadata");
                None
            }
        };
        if alive.is_none() {
            remove_dir(dir).await?;
        }
        Ok(alive)
    }
}

async fn read_meta(path: &Path) -> Result<Option<SessionInfo>> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(path),
    };
    serde_json::from_str(text.trim())
        .map(Some)
        .map_err(|e| DatastoreError::MalformedJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

async fn remove_dir(dir: &Path) -> Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(dir),
    }
}
