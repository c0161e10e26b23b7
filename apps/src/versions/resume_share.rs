//! Training resume states through object storage (`--storage-url`): the resume state of each
//! resolution (`models/model*.resume.pt`, written by the trainer at every epoch end) is a blob
//! named in the database (`blob_refs` kind `resume`, owner `highres`/`lowres`), so a server
//! that did not train finds and fetches the last one another process wrote, and `resume: true`
//! there continues from it.
//!
//! [`sync`] runs with every look at the active version (the pickup poll every 3 s, each
//! inference, the start): a local state newer than the recorded one (by modification time
//! against the row's update time) and with other content is put and recorded; a recorded
//! state newer than the local one (or none here) is fetched into place (temp file + rename).
//! Clocks of the machines are assumed roughly in step.

use std::time::UNIX_EPOCH;

use ferrolabel_datastore::{blocking, Datastore};
use ferrolabel_models::Resolution;
use serde_json::json;

use super::files::hash_file;
use super::{resolution_name, Result, WholeBodyApp, MODEL_NAME};

/// The `blob_refs` kind of resume states.
const KIND: &str = "resume";

/// Brings the resume state of `res` here and in the database in line (see the module docs).
pub(super) async fn sync(app: &WholeBodyApp, ds: &Datastore, res: Resolution) -> Result<()> {
    if ds.storage_url().is_none() {
        return Ok(());
    }
    let owner = resolution_name(res);
    let state = ferrolabel_models::train::state_path(&app.weights_path(MODEL_NAME, res)?);
    let name = state
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let local = {
        let state = state.clone();
        blocking(move || -> Result<_> {
            let Some((sha, _)) = hash_file(&state)? else {
                return Ok(None);
            };
            let modified = std::fs::metadata(&state)?
                .modified()?
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            Ok(Some((sha, modified)))
        })
        .await?
    };
    let recorded = ds.blob_refs(KIND, owner).await?.into_iter().next();
    let publish = match (&local, &recorded) {
        (Some((sha, _)), Some(r)) if *sha == r.sha256 => return Ok(()),
        (Some(_), None) => true,
        (Some((_, modified)), Some(r)) => *modified >= r.updated_at,
        (None, Some(_)) => false,
        (None, None) => return Ok(()),
    };
    if publish {
        ds.put_blob_refs(KIND, owner, &[(name, state.as_path())], &json!({}))
            .await?;
        tracing::info!(
            resolution = owner,
            "resume state shared through object storage"
        );
    } else if let Some(r) = recorded {
        ds.fetch_blob(&r.sha256, &state).await?;
        tracing::info!(
            resolution = owner,
            "resume state fetched from object storage"
        );
    }
    Ok(())
}
