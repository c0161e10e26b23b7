//! `final` labels back to the PACS: each saved `final` label revision of a PACS image is an
//! outbox row (SQLite, so it survives the PACS being down and a restart) that [`retry`] turns
//! into a BINARY DICOM SEG referencing the source series and stores with STOW-RS.
//!
//! A save queues its row and tries it at once in a background task (the answer waits for it a
//! little, never for a stalled PACS); [`retry`] runs at start and every sync interval. The
//! SEG's UIDs are derived from the outbox row, so a retry after a lost answer stores the same
//! instance again rather than a duplicate.

use std::time::Duration;

use ferrolabel_datastore::{blocking, DatastoreError, OutboxItem};
use ferrolabel_dicom::seg::{write_binary_seg, SegOptions, Structure};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{remote_error, Pacs, STUDY};

/// Outbox kind of a SEG to store with STOW-RS.
pub const STOW_SEG: &str = "stow_seg";

/// How long a label save waits for its SEG to reach the PACS before answering (the STOW goes
/// on in the background, and the outbox retries it if it fails).
pub const SAVE_WAIT: Duration = Duration::from_secs(20);

/// Queues the SEG of a saved `final` label revision and starts sending it; answers what the
/// save response reports under `pacs`: `{"stored": true, "seg_series": uid, ...}` when the
/// PACS took it within [`SAVE_WAIT`], else `{"stored": false, "queued": true, "detail": ...}`.
pub async fn queue_final(
    pacs: std::sync::Arc<Pacs>,
    image_id: &str,
    rev: Option<i64>,
) -> Result<Value, DatastoreError> {
    let id = pacs
        .datastore
        .outbox_add(STOW_SEG, image_id, ferrolabel_datastore::FINAL_TAG, rev)
        .await?;
    let task = tokio::spawn(async move { retry(&pacs).await });
    let outcome = match tokio::time::timeout(SAVE_WAIT, task).await {
        Ok(Ok(report)) => report.into_iter().find(|(row, _)| *row == id),
        _ => None,
    };
    Ok(match outcome {
        Some((_, Ok(result))) => {
            let mut v = Value::Object(result);
            v["stored"] = true.into();
            v
        }
        Some((_, Err(e))) => {
            json!({"stored": false, "queued": true, "detail": e.to_string()})
        }
        None => json!({"stored": false, "queued": true, "detail": "the PACS is still busy"}),
    })
}

/// Tries every pending outbox task once, oldest first (one sender at a time); returns each
/// tried row with its result. A failure is recorded on the row and retried next time.
pub async fn retry(pacs: &Pacs) -> Vec<(i64, Result<Map<String, Value>, DatastoreError>)> {
    let _one = pacs.outbox_lock.lock().await;
    let pending = match pacs.datastore.outbox_pending(1000).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the outbox");
            return Vec::new();
        }
    };
    let mut report = Vec::with_capacity(pending.len());
    for item in pending {
        let result = send(pacs, &item).await;
        let recorded = match &result {
            Ok(r) => {
                let shown = Value::Object(r.clone());
                tracing::info!(image = %item.image_id, rev = ?item.rev, result = %shown, "SEG stored in the PACS");
                pacs.datastore.outbox_done(item.id, r).await
            }
            Err(e) if is_transient(e) => {
                tracing::warn!(image = %item.image_id, rev = ?item.rev, attempts = item.attempts + 1, error = %e, "SEG not stored in the PACS; will retry");
                pacs.datastore.outbox_failed(item.id, &e.to_string()).await
            }
            Err(e) => {
                // retrying cannot help (a label off its series' grid, a revision gone): the
                // row is closed with the reason, the label stays saved locally
                tracing::error!(image = %item.image_id, rev = ?item.rev, error = %e, "SEG cannot be made; not retried");
                pacs.datastore
                    .outbox_done(item.id, &done("failed", &e.to_string()))
                    .await
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record an outbox attempt");
        }
        let gateway =
            matches!(&result, Err(DatastoreError::Remote { status, .. }) if *status >= 500);
        report.push((item.id, result));
        if gateway {
            // the PACS is down: the rest waits for the next retry
            break;
        }
    }
    report
}

/// Whether an attempt may succeed later: the PACS failed (502/504), or a local I/O, database
/// or task failure.
fn is_transient(e: &DatastoreError) -> bool {
    match e {
        DatastoreError::Remote { status, .. } => *status >= 500,
        DatastoreError::Invalid(_) | DatastoreError::NotFound(_) | DatastoreError::InvalidId(_) => {
            false
        }
        _ => true,
    }
}

/// A `2.25.` UID derived from `seed` (stable across retries).
fn derived_uid(seed: &str) -> String {
    let d = Sha256::digest(seed.as_bytes());
    let mut n = [0u8; 16];
    n.copy_from_slice(&d[..16]);
    format!("2.25.{}", u128::from_be_bytes(n) >> 1)
}

/// Builds the SEG of one outbox row and stores it.
async fn send(pacs: &Pacs, item: &OutboxItem) -> Result<Map<String, Value>, DatastoreError> {
    let ds = &pacs.datastore;
    let Some(remote) = ds.remote_of(&item.image_id).await? else {
        return Ok(done("skipped", "not a PACS image"));
    };
    let label = match item.rev {
        Some(rev) => {
            ds.label_revision_path(&item.image_id, &item.tag, rev)
                .await?
        }
        None => ds.label_path(&item.image_id, &item.tag).await?,
    };
    let label_info = ds
        .label_info(&item.image_id, &item.tag)
        .await?
        .unwrap_or_default();
    let cached = pacs.cached(&item.image_id, &remote).await?;
    let series = pacs.series_info(&cached).await?;
    let study = remote
        .get(STUDY)
        .and_then(Value::as_str)
        .unwrap_or(&series.study_instance_uid)
        .to_string();
    let limits = pacs.options.image;
    let structures = structures_for(&pacs.structures, &label_info);
    let seed = format!("{}|{}|{:?}|{}", item.image_id, item.tag, item.rev, item.id);
    let uids = (
        derived_uid(&format!("sop|{seed}")),
        derived_uid(&format!("series|{seed}")),
    );
    let options = SegOptions {
        series_description: format!("ferrolabel {} label", item.tag),
        uids: Some(uids.clone()),
        ..SegOptions::default()
    };
    let bytes = blocking(move || -> Result<Option<Vec<u8>>, DatastoreError> {
        let volume = ferrolabel_imaging::read_volume(&label, &limits)
            .map_err(|e| DatastoreError::Invalid(format!("label {}: {e}", label.display())))?;
        let labels: Vec<u8> = volume
            .data
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        if labels.iter().all(|v| *v == 0) {
            return Ok(None);
        }
        write_binary_seg(&series, &labels, &structures, &options)
            .map(Some)
            .map_err(|e| DatastoreError::Invalid(format!("SEG of {}: {e}", label.display())))
    })
    .await?;
    let Some(bytes) = bytes else {
        return Ok(done("skipped", "empty label"));
    };
    pacs.client
        .store_instances(Some(&study), &[bytes.as_slice()])
        .await
        .map_err(remote_error)?;
    let mut r = Map::new();
    r.insert("seg_series".into(), uids.1.into());
    r.insert("seg_instance".into(), uids.0.into());
    r.insert("study".into(), study.into());
    r.insert("rev".into(), item.rev.into());
    Ok(r)
}

fn done(key: &str, why: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.into(), why.into());
    m
}

/// The structures of a label: the bundle's, renamed by the label's `label_info`
/// (`[{"name": ..., "idx": ...}]`, as Slicer sends it) where it names a value, and
/// `label_<v>` for the values 1..=255 neither names.
pub(crate) fn structures_for(
    bundle: &[Structure],
    label_info: &Map<String, Value>,
) -> Vec<Structure> {
    let mut names: Vec<Option<String>> = vec![None; 256];
    for s in bundle {
        names[s.value as usize] = Some(s.name.clone());
    }
    let given = label_info
        .get("label_info")
        .or_else(|| label_info.get("params").and_then(|p| p.get("label_info")))
        .and_then(Value::as_array);
    for e in given.into_iter().flatten() {
        let name = e.get("name").and_then(Value::as_str);
        let idx = e.get("idx").and_then(Value::as_i64);
        if let (Some(name), Some(idx)) = (name, idx) {
            if (1..=255).contains(&idx) && !name.is_empty() {
                names[idx as usize] = Some(name.to_string());
            }
        }
    }
    (1..=255u8)
        .map(|v| Structure {
            value: v,
            name: names[v as usize]
                .clone()
                .unwrap_or_else(|| format!("label_{v}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_stable_and_valid() {
        let a = derived_uid("x|final|Some(1)|3");
        assert_eq!(a, derived_uid("x|final|Some(1)|3"));
        assert_ne!(a, derived_uid("x|final|Some(2)|3"));
        assert!(a.len() <= 64 && a.starts_with("2.25.") && !a[5..].starts_with('0'));
    }

    #[test]
    fn label_info_renames_values() {
        let bundle = vec![Structure {
            value: 1,
            name: "spleen".into(),
        }];
        let info = json!({"label_info": [{"name": "liver", "idx": 2}]});
        let s = structures_for(&bundle, info.as_object().unwrap());
        assert_eq!(s[0].name, "spleen");
        assert_eq!(s[1].name, "liver");
        assert_eq!(s[2].name, "label_3");
    }
}
