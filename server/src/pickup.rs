//! Model pickup: every server uses the newest checkpoint, wherever it was trained.
//!
//! A training job, run by this server, another server or a `ferrolabel worker`, activates a new
//! checkpoint by replacing the bundle's `models/model.pt` (temp file + fsync + rename). Every
//! process of a deployment opens the same bundle folder (a shared folder), and the engine
//! compares the weights file's modification time before each job, so the next `/infer` on any
//! server runs the new weights without a restart.
//!
//! This module adds the eager half: a task polls the identity of the weights files (size and
//! modification time) every [`POLL`]; when one changes it logs the pickup and, with
//! `--conf preload` on (the default), reloads the default resolution at once, so the first
//! request after a new checkpoint does not pay for the load. The identity is read from the
//! file itself, so it does not matter which process (or machine) wrote it.
//!
//! With object storage (`--storage-url`) the servers need not share the bundle folder: each
//! poll first brings this server's weights in line with the database's active version
//! ([`ferrolabel_apps::versions::active`] fetches it from the bucket and installs it), and the
//! identity check below then picks the new file up as if another process had written it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferrolabel_apps::WholeBodyApp;
use ferrolabel_datastore::Datastore;
use ferrolabel_models::Resolution;

/// How often the weights files are looked at.
pub const POLL: Duration = Duration::from_secs(3);

/// What identifies one version of a weights file: its size and modification time (`None`:
/// missing). A new checkpoint is a new file (renamed into place), so either changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Size in bytes.
    pub len: u64,
    /// Modification time.
    pub modified: Option<SystemTime>,
}

/// The identity of the file at `path`, `None` when it is missing.
pub fn identity(path: &Path) -> Option<Identity> {
    let m = std::fs::metadata(path).ok()?;
    Some(Identity {
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// Starts the watcher of `app`'s weights on the current tokio runtime (the server's actix
/// system); `every` is the polling interval; `reload`: load a changed default resolution at
/// once; `shared`: the datastore whose active model versions the weights follow (a datastore
/// with object storage; `None`: only the files are watched). Abort the handle to stop it.
pub fn spawn(
    app: Arc<WholeBodyApp>,
    every: Duration,
    reload: bool,
    shared: Option<Datastore>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let resolutions = [Resolution::High, Resolution::Low];
        let path = |res| app.engine().bundle().weights_path(res);
        let mut seen: Vec<Option<Identity>> =
            resolutions.iter().map(|r| identity(&path(*r))).collect();
        loop {
            tokio::time::sleep(every).await;
            for (i, res) in resolutions.iter().enumerate() {
                if let Some(ds) = &shared {
                    if let Err(e) = ferrolabel_apps::versions::active(&app, ds, *res).await {
                        tracing::warn!(?res, "weights not in line with the active version: {e}");
                    }
                }
                let now = identity(&path(*res));
                if now == seen[i] {
                    continue;
                }
                seen[i] = now;
                let Some(id) = now else {
                    tracing::warn!(?res, "the weights file is gone");
                    continue;
                };
                tracing::info!(?res, bytes = id.len, "new checkpoint picked up");
                if reload && *res == app.default_resolution() {
                    if let Err(e) = app.engine().preload(*res).await {
                        tracing::warn!(?res, "new checkpoint not loaded: {e}");
                    }
                }
            }
        }
    })
}
