//! Reconciliation of the database with the studies folder.
//!
//! The scan (at open and on [`Datastore::refresh`]) makes the database match the folder:
//! * top-level files with a configured extension are registered if unknown
//!   (info `{ts, name}`); images whose file vanished are dropped (their labels with them);
//! * `labels/<tag>/<id><ext>` files of known images are registered if unknown; orphans are
//!   logged and ignored; labels whose file vanished are marked deleted;
//! * revision files without a row (a save interrupted between its renames and its commit) are
//!   recorded as revisions, and if one matches the live file, the label is pointed at it.
//!
//! This is what makes the write order in [`crate::files`] crash-safe: a file renamed into place
//! before a crash is picked up here, and a row whose file never arrived is dropped here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde_json::Map;
use sqlx::Row;

use crate::blocking::blocking;
use crate::error::{IoContext, Result};
use crate::files;
use crate::ids::{match_extension, validate_ext, validate_id, validate_tag};
use crate::store::{now_secs, parse_info, subdirs, Datastore, PRIVATE_DIR};

/// One change the scan makes to the database.
#[derive(Debug)]
enum Change {
    AddImage {
        id: String,
        ext: String,
    },
    SetImageExt {
        id: String,
        ext: String,
    },
    DropImage {
        id: String,
    },
    SetLabelFile {
        id: String,
        tag: String,
        ext: String,
    },
    MarkLabelDeleted {
        id: String,
        tag: String,
    },
    AddRevision(Orphan),
    SetLabelRev {
        id: String,
        tag: String,
        rev: i64,
    },
}

#[derive(Debug)]
struct Orphan {
    id: String,
    tag: String,
    rev: i64,
    parent: Option<i64>,
    ext: String,
    rel: String,
    sha: String,
    created_at: i64,
}

/// What the database holds, read before scanning the folder.
struct Snapshot {
    images: Vec<(String, String)>,
    /// Ids of remote images and of images in object storage (no file in the folder; the scan
    /// leaves them alone).
    remote: HashSet<String>,
    /// Non-deleted labels whose content is a blob in object storage (left alone too).
    blobs: HashSet<(String, String)>,
    /// Non-deleted labels: (image id, tag, ext).
    labels: Vec<(String, String, String)>,
    revisions: HashSet<(String, String, i64)>,
}

impl Datastore {
    /// Makes the database match the files (see the module docs). Caller holds the scan lock.
    pub(crate) async fn reconcile(&self) -> Result<()> {
        let snap = self.snapshot().await?;
        let ds = self.clone();
        let changes = blocking(move || ds.plan(&snap)).await?;
        if changes.is_empty() {
            return Ok(());
        }
        let now = now_secs();
        let mut tx = self.begin_write().await?;
        for change in &changes {
            tracing::info!(?change, "reconcile");
            match change {
                Change::AddImage { id, ext } => {
                    sqlx::query(
                        "INSERT INTO images (id, ext, info, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT(id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(ext)
                    .bind(new_info(id, ext, now))
                    .bind(now)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::SetImageExt { id, ext } => {
                    // The info's `name` follows the file (read-modify-write: JSON functions
                    // differ between SQLite and PostgreSQL, and the info stays byte-stable).
                    let info: Option<String> =
                        sqlx::query_scalar("SELECT info FROM images WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let mut info = match info {
                        Some(text) => parse_info(&text)?,
                        None => Map::new(),
                    };
                    info.insert("name".into(), format!("{id}{ext}").into());
                    sqlx::query(
                        "UPDATE images SET ext = $1, info = $2, updated_at = $3 WHERE id = $4",
                    )
                    .bind(ext)
                    .bind(serde_json::to_string(&info)?)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::DropImage { id } => {
                    sqlx::query("DELETE FROM images WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                Change::SetLabelFile { id, tag, ext } => {
                    sqlx::query(
                        "INSERT INTO labels (image_id, tag, ext, info, rev, deleted, updated_at) \
                         VALUES ($1, $2, $3, $4, NULL, 0, $5) ON CONFLICT(image_id, tag) DO UPDATE \
                         SET ext = excluded.ext, info = excluded.info, rev = NULL, deleted = 0, \
                         updated_at = excluded.updated_at, sha256 = NULL",
                    )
                    .bind(id)
                    .bind(tag)
                    .bind(ext)
                    .bind(new_info(id, ext, now))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::MarkLabelDeleted { id, tag } => {
                    sqlx::query(
                        "UPDATE labels SET deleted = 1, updated_at = $1 \
                         WHERE image_id = $2 AND tag = $3",
                    )
                    .bind(now)
                    .bind(id)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::AddRevision(o) => {
                    let mut info = Map::new();
                    info.insert("recovered".into(), true.into());
                    sqlx::query(
                        "INSERT INTO label_revisions (image_id, tag, rev, parent_rev, \
                         author, created_at, sha256, ext, path, info) \
                         VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                    )
                    .bind(&o.id)
                    .bind(&o.tag)
                    .bind(o.rev)
                    .bind(o.parent)
                    .bind(o.created_at)
                    .bind(&o.sha)
                    .bind(&o.ext)
                    .bind(&o.rel)
                    .bind(serde_json::to_string(&info)?)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::SetLabelRev { id, tag, rev } => {
                    sqlx::query(
                        "UPDATE labels SET rev = $1 WHERE image_id = $2 AND tag = $3 AND deleted = 0",
                    )
                    .bind(rev)
                    .bind(id)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        self.bump();
        Ok(())
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query("SELECT id, ext, remote, sha256 FROM images ORDER BY seq")
            .fetch_all(&mut *tx)
            .await?;
        let objects = self.objects().is_some();
        let mut images = Vec::with_capacity(rows.len());
        let mut remote = HashSet::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            let blob = objects && r.try_get::<Option<String>, _>("sha256")?.is_some();
            if blob || r.try_get::<Option<String>, _>("remote")?.is_some() {
                remote.insert(id.clone());
            }
            images.push((id, r.try_get("ext")?));
        }
        let mut labels = Vec::new();
        let mut blobs = HashSet::new();
        for r in sqlx::query("SELECT image_id, tag, ext, sha256 FROM labels WHERE deleted = 0")
            .fetch_all(&mut *tx)
            .await?
        {
            let (id, tag): (String, String) = (r.try_get("image_id")?, r.try_get("tag")?);
            if objects && r.try_get::<Option<String>, _>("sha256")?.is_some() {
                blobs.insert((id.clone(), tag.clone()));
            }
            labels.push((id, tag, r.try_get("ext")?));
        }
        let revisions = sqlx::query("SELECT image_id, tag, rev FROM label_revisions")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get("image_id")?, r.try_get("tag")?, r.try_get("rev")?)))
            .collect::<Result<_>>()?;
        tx.commit().await?;
        Ok(Snapshot {
            images,
            remote,
            blobs,
            labels,
            revisions,
        })
    }

    /// Compares the snapshot with the folder (blocking) and lists the changes to make.
    fn plan(&self, snap: &Snapshot) -> Result<Vec<Change>> {
        let exts = self.extensions();
        let mut changes = Vec::new();

        // Images.
        let scanned: BTreeMap<String, String> = scan_files(self.studies(), exts)?.into_iter().fold(
            BTreeMap::new(),
            |mut m, (id, ext)| {
                if let Some(first) = m.get(&id) {
                    tracing::warn!(%id, %first, ignored = %ext, "two image files for one id");
                } else {
                    m.insert(id, ext);
                }
                m
            },
        );
        let mut images: HashSet<&str> = HashSet::new();
        for (id, ext) in &snap.images {
            // a remote image has no file here: the scan leaves it alone
            if snap.remote.contains(id) || files::is_file(&self.image_file(id, ext)) {
                images.insert(id);
            } else if let Some(other) = scanned.get(id) {
                changes.push(Change::SetImageExt {
                    id: id.clone(),
                    ext: other.clone(),
                });
                images.insert(id);
            } else {
                tracing::warn!(%id, "image file vanished; dropping the image");
                changes.push(Change::DropImage { id: id.clone() });
            }
        }
        // a set, not a scan of the list: reopening a 100,000-image folder was quadratic
        let known: HashSet<&str> = snap.images.iter().map(|(id, _)| id.as_str()).collect();
        for (id, ext) in &scanned {
            if !known.contains(id.as_str()) {
                changes.push(Change::AddImage {
                    id: id.clone(),
                    ext: ext.clone(),
                });
                images.insert(id);
            }
        }

        // Labels.
        let mut found: BTreeMap<(String, String), String> = BTreeMap::new();
        for dir in subdirs(&self.studies().join("labels"))? {
            let tag = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if validate_tag(&tag).is_err() {
                tracing::warn!(%tag, "ignoring label folder with an unsafe name");
                continue;
            }
            for (id, ext) in scan_files(&dir, exts)? {
                found.entry((id, tag.clone())).or_insert(ext);
            }
        }
        let mut live: HashMap<(String, String), String> = HashMap::new();
        for (id, tag, ext) in &snap.labels {
            if !images.contains(id.as_str()) {
                continue; // dropped with its image
            }
            let key = (id.clone(), tag.clone());
            // a label in object storage has no file here: left alone
            if snap.blobs.contains(&key) || files::is_file(&self.label_file(tag, id, ext)) {
                live.insert(key, ext.clone());
            } else if let Some(other) = found.get(&key) {
                changes.push(Change::SetLabelFile {
                    id: id.clone(),
                    tag: tag.clone(),
                    ext: other.clone(),
                });
                live.insert(key, other.clone());
            } else {
                tracing::warn!(%id, %tag, "label file vanished; marking the label deleted");
                changes.push(Change::MarkLabelDeleted {
                    id: id.clone(),
                    tag: tag.clone(),
                });
            }
        }
        for ((id, tag), ext) in found {
            if !images.contains(id.as_str()) {
                tracing::warn!(%id, %tag, "label file without an image; ignored");
            } else if !live.contains_key(&(id.clone(), tag.clone())) {
                changes.push(Change::SetLabelFile {
                    id: id.clone(),
                    tag: tag.clone(),
                    ext: ext.clone(),
                });
                live.insert((id, tag), ext);
            }
        }

        // Revision files without rows.
        self.plan_revisions(snap, &live, &mut changes)?;
        Ok(changes)
    }

    fn plan_revisions(
        &self,
        snap: &Snapshot,
        live: &HashMap<(String, String), String>,
        changes: &mut Vec<Change>,
    ) -> Result<()> {
        let root = self.studies().join(PRIVATE_DIR).join("revisions");
        for tag_dir in subdirs(&root)? {
            let tag = tag_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            for id_dir in subdirs(&tag_dir)? {
                let id = id_dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if validate_tag(&tag).is_err() || validate_id(&id).is_err() {
                    continue;
                }
                let mut orphans = Vec::new();
                for (rev, name) in revision_files(&id_dir)? {
                    if !snap.revisions.contains(&(id.clone(), tag.clone(), rev)) {
                        orphans.push((rev, name));
                    }
                }
                if orphans.is_empty() {
                    continue;
                }
                let mut known: Vec<i64> = snap
                    .revisions
                    .iter()
                    .filter(|(i, t, _)| *i == id && *t == tag)
                    .map(|(_, _, r)| *r)
                    .collect();
                let live_sha = match live.get(&(id.clone(), tag.clone())) {
                    Some(ext) if files::is_file(&self.label_file(&tag, &id, ext)) => {
                        Some(files::sha256_file(&self.label_file(&tag, &id, ext))?)
                    }
                    _ => None,
                };
                let mut matched = None;
                for (rev, name) in orphans {
                    let path = id_dir.join(&name);
                    let sha = files::sha256_file(&path)?;
                    let created_at = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or_else(now_secs, |d| d.as_secs() as i64);
                    if live_sha.as_deref() == Some(sha.as_str()) {
                        matched = Some(rev);
                    }
                    tracing::warn!(%id, %tag, rev, "recording a revision left by an interrupted save");
                    changes.push(Change::AddRevision(Orphan {
                        id: id.clone(),
                        tag: tag.clone(),
                        rev,
                        parent: known.iter().copied().filter(|r| *r < rev).max(),
                        ext: name[rev.to_string().len()..].to_string(),
                        rel: Datastore::revision_dir_rel(&tag, &id)
                            .join(&name)
                            .to_string_lossy()
                            .into_owned(),
                        sha,
                        created_at,
                    }));
                    known.push(rev);
                }
                if let Some(rev) = matched {
                    changes.push(Change::SetLabelRev {
                        id,
                        tag: tag.clone(),
                        rev,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The info of a file registered by the scan.
fn new_info(id: &str, ext: &str, ts: i64) -> String {
    serde_json::json!({"ts": ts, "name": format!("{id}{ext}")}).to_string()
}

/// `(id, ext)` of the regular files directly in `dir` matching `exts`, sorted by file name.
fn scan_files(dir: &Path, exts: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for name in file_names(dir)? {
        if name.starts_with('.') || !files::is_file(&dir.join(&name)) {
            continue;
        }
        if let Some((id, ext)) = match_extension(&name, exts) {
            match validate_id(id) {
                Ok(()) => out.push((id.to_string(), ext.to_string())),
                Err(e) => tracing::warn!(error = %e, file = %name, "ignoring file"),
            }
        }
    }
    Ok(out)
}

/// `(rev, file name)` of the files named `<digits><ext>` in a revision folder, by revision.
fn revision_files(dir: &Path) -> Result<Vec<(i64, String)>> {
    let mut out = Vec::new();
    for name in file_names(dir)? {
        let digits = name.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(rev) = name[..digits].parse::<i64>() else {
            continue;
        };
        if rev > 0 && validate_ext(&name[digits..]).is_ok() && rev.to_string().len() == digits {
            out.push((rev, name));
        }
    }
    out.sort();
    Ok(out)
}

/// The UTF-8 entry names in `dir`, sorted (none if it does not exist).
fn file_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(dir),
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry.at(dir)?.file_name().into_string() {
            Ok(n) => names.push(n),
            Err(n) => tracing::warn!(name = ?n, "ignoring non-UTF-8 file name"),
        }
    }
    names.sort();
    Ok(names)
}
