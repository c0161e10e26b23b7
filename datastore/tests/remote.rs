//! Remote (PACS) images and the outbox, on SQLite and PostgreSQL (see `common`): listed series become images
//! without files that the folder scan keeps, survive reopening, are made local only through the
//! installed source (a missing or failing source is `Remote`), keep their labels when the PACS
//! forgets them, and outbox rows stay pending until done.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::Db;
use ferrolabel_datastore::remote::BoxFuture;
use ferrolabel_datastore::{DatastoreError, RemoteImage, RemoteSource, Source, FINAL_TAG};
use serde_json::{json, Map, Value};

fn listed(ids: &[&str]) -> Vec<RemoteImage> {
    ids.iter()
        .map(|id| RemoteImage {
            id: id.to_string(),
            remote: json!({"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": id})
                .as_object()
                .cloned()
                .unwrap(),
            info: json!({"SeriesDescription": format!("series {id}")})
                .as_object()
                .cloned()
                .unwrap(),
        })
        .collect()
}

/// A source that "fetches" by writing a file into a folder, counting fetches; ids starting
/// with `9.` are a PACS that is down.
struct Folder {
    dir: PathBuf,
    fetches: AtomicUsize,
}

impl RemoteSource for Folder {
    fn local_path(&self, id: &str, _remote: &Map<String, Value>) -> PathBuf {
        self.dir.join(format!("{id}.nii"))
    }

    fn fetch<'a>(
        &'a self,
        id: &'a str,
        remote: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<PathBuf, DatastoreError>> {
        Box::pin(async move {
            if id.starts_with("9.") {
                return Err(DatastoreError::Remote {
                    status: 502,
                    detail: "PACS unreachable".into(),
                });
            }
            assert_eq!(remote["StudyInstanceUID"], "1.2.3");
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let p = self.local_path(id, remote);
            std::fs::write(&p, b"voxels").unwrap();
            Ok(p)
        })
    }
}

async fn remote_images_sync_fetch_and_outbox(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let studies = tmp.path().join("studies");
    let ds = db.open(&studies).await;
    let stats = ds
        .sync_remote_images(&listed(&["1.2.3.1", "1.2.3.2", "9.9"]), true)
        .await
        .unwrap();
    assert_eq!((stats.added, stats.updated, stats.removed), (3, 0, 0));
    assert_eq!(
        ds.list_images().await.unwrap(),
        ["1.2.3.1", "1.2.3.2", "9.9"]
    );
    let rec = ds.image("1.2.3.1").await.unwrap().unwrap();
    assert!(rec.remote);
    assert_eq!(rec.info["SeriesDescription"], "series 1.2.3.1");
    assert_eq!(rec.info["name"], "1.2.3.1.nii");
    // the same listing again changes nothing
    let stats = ds
        .sync_remote_images(&listed(&["1.2.3.1", "1.2.3.2", "9.9"]), true)
        .await
        .unwrap();
    assert_eq!((stats.added, stats.updated, stats.removed), (0, 0, 0));

    // no source installed: a remote image cannot be made local (502), never a panic
    match ds.image_path("1.2.3.1").await {
        Err(DatastoreError::Remote { status: 502, .. }) => {}
        other => panic!("{other:?}"),
    }

    // the folder scan keeps them (they have no file in the studies folder)
    ds.refresh().await.unwrap();
    assert_eq!(ds.list_images().await.unwrap().len(), 3);

    // a label on a remote image, with its revision
    let label = ds
        .save_label(
            "1.2.3.2",
            FINAL_TAG,
            ".nii.gz",
            Source::Bytes(b"label".to_vec()),
            Map::new(),
            Some("me"),
        )
        .await
        .unwrap();
    assert_eq!(label.rev, Some(1));
    let row = ds
        .outbox_add("stow_seg", "1.2.3.2", FINAL_TAG, label.rev)
        .await
        .unwrap();

    // the PACS forgets both series: the unlabelled one goes, the labelled one stays
    let stats = ds
        .sync_remote_images(&listed(&["9.9"]), true)
        .await
        .unwrap();
    assert_eq!(stats.removed, 1);
    assert_eq!(ds.list_images().await.unwrap(), ["1.2.3.2", "9.9"]);
    // an incomplete listing drops nothing
    let stats = ds.sync_remote_images(&[], false).await.unwrap();
    assert_eq!(stats.removed, 0);

    // reopened: rows, label and outbox are still there
    ds.close().await;
    let ds = db.open(&studies).await;
    assert_eq!(ds.list_images().await.unwrap(), ["1.2.3.2", "9.9"]);
    assert_eq!(ds.status().await.unwrap().completed, 1);
    let pending = ds.outbox_pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].id, pending[0].rev), (row, Some(1)));

    // with a source: image_path and the training datalist make remote images local
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let source = Arc::new(Folder {
        dir: cache.clone(),
        fetches: AtomicUsize::new(0),
    });
    assert!(ds.set_remote_source(source.clone()));
    assert_eq!(
        ds.image_path("1.2.3.2").await.unwrap(),
        cache.join("1.2.3.2.nii")
    );
    let hint = ds.datalist().await.unwrap();
    assert_eq!(hint[0].0, cache.join("1.2.3.2.nii"));
    let local = ds.datalist_local().await.unwrap();
    assert_eq!(local.len(), 1);
    assert!(local[0].0.is_file());
    assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
    match ds.image_path("9.9").await {
        Err(DatastoreError::Remote {
            status: 502,
            detail,
        }) => assert!(detail.contains("PACS")),
        other => panic!("{other:?}"),
    }

    // the outbox: a failure keeps the row pending, done closes it with its result
    ds.outbox_failed(row, "PACS unreachable").await.unwrap();
    let pending = ds.outbox_pending(10).await.unwrap();
    assert_eq!(pending[0].attempts, 1);
    assert_eq!(pending[0].last_error.as_deref(), Some("PACS unreachable"));
    let result = json!({"seg_series": "2.25.1"})
        .as_object()
        .cloned()
        .unwrap();
    ds.outbox_done(row, &result).await.unwrap();
    assert!(ds.outbox_pending(10).await.unwrap().is_empty());
    assert_eq!(ds.outbox_results("1.2.3.2").await.unwrap(), [result]);
}

async fn thousands_of_series_sync_in_one_transaction(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(&tmp.path().join("studies")).await;
    let ids: Vec<String> = (0..5000).map(|i| format!("1.2.826.0.1.{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let t0 = std::time::Instant::now();
    let stats = ds.sync_remote_images(&listed(&refs), true).await.unwrap();
    let first = t0.elapsed();
    assert_eq!(stats.added, 5000);
    let t1 = std::time::Instant::now();
    let again = ds.sync_remote_images(&listed(&refs), true).await.unwrap();
    let second = t1.elapsed();
    assert_eq!((again.added, again.updated, again.removed), (0, 0, 0));
    let t2 = std::time::Instant::now();
    assert_eq!(ds.list_images().await.unwrap().len(), 5000);
    assert_eq!(ds.status().await.unwrap().total, 5000);
    eprintln!(
        "5000 series: first sync {:.0} ms, unchanged sync {:.0} ms, list + stats {:.0} ms",
        first.as_secs_f64() * 1e3,
        second.as_secs_f64() * 1e3,
        t2.elapsed().as_secs_f64() * 1e3
    );
}

on_both!(
    remote_images_sync_fetch_and_outbox,
    thousands_of_series_sync_in_one_transaction,
);
