//! The model_versions table on SQLite and PostgreSQL (see `common`): numbering and parents per
//! (model, resolution), the same file recorded once, activation (one active version), unknown
//! versions, pruning marks, provenance round trip, the final labels' revisions, and two
//! datastore handles recording at once (no duplicate version numbers).

mod common;

use common::Db;
use ferrolabel_datastore::{DatastoreError, NewModelVersion, Source, TrainedOn};
use serde_json::{json, Map};

const T0: i64 = 1_700_000_000_000;

fn new(res: &str, n: u8, source: &str) -> NewModelVersion {
    NewModelVersion {
        model: "m".into(),
        resolution: res.into(),
        sha256: format!("{n:02x}").repeat(32),
        ext: "pt".into(),
        size: 100 + n as i64,
        source: source.into(),
        ..NewModelVersion::default()
    }
}

async fn record_activate_list(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    assert!(ds.model_versions("m", "highres").await.unwrap().is_empty());
    assert!(ds
        .active_model_version("m", "highres")
        .await
        .unwrap()
        .is_none());

    let (v1, created) = ds
        .record_model_version(&new("highres", 1, "initial"), true, T0)
        .await
        .unwrap();
    assert!(created);
    assert_eq!((v1.version, v1.parent, v1.active), (1, None, true));
    assert_eq!(v1.activated_at, Some(T0));
    let mut trained = new("highres", 2, "train");
    trained.job_id = Some("job-1".into());
    trained.username = Some("ann".into());
    trained.trained_on = vec![
        TrainedOn {
            image: "a".into(),
            rev: Some(3),
        },
        TrainedOn {
            image: "b".into(),
            rev: None,
        },
    ];
    trained.metrics = json!({"best_metric": 0.5, "best_epoch": 2});
    let (v2, _) = ds
        .record_model_version(&trained, true, T0 + 1)
        .await
        .unwrap();
    assert_eq!((v2.version, v2.parent, v2.active), (2, Some(1), true));
    assert_eq!(v2.job_id.as_deref(), Some("job-1"));
    assert_eq!(v2.user.as_deref(), Some("ann"));
    assert_eq!(v2.trained_on, trained.trained_on);
    assert_eq!(v2.metrics["best_epoch"], 2);
    // the other resolution numbers on its own
    let (low, _) = ds
        .record_model_version(&new("lowres", 9, "upload"), false, T0 + 2)
        .await
        .unwrap();
    assert_eq!((low.version, low.parent, low.active), (1, None, false));

    let list = ds.model_versions("m", "highres").await.unwrap();
    let nums: Vec<(i64, bool)> = list.iter().map(|v| (v.version, v.active)).collect();
    assert_eq!(nums, [(2, true), (1, false)], "newest first, one active");

    // the same file again: no new row, activated
    let (again, created) = ds
        .record_model_version(&new("highres", 1, "upload"), true, T0 + 3)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!((again.version, again.source.as_str()), (1, "initial"));
    assert!(again.active);
    assert_eq!(
        ds.active_model_version("m", "highres")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    // a third version's parent is the active one (1), not the newest (2)
    let (v3, _) = ds
        .record_model_version(&new("highres", 3, "upload"), true, T0 + 4)
        .await
        .unwrap();
    assert_eq!((v3.version, v3.parent), (3, Some(1)));

    // rollback and "no active version"
    ds.set_active_model_version("m", "highres", Some(2), T0 + 5)
        .await
        .unwrap();
    let active = ds
        .active_model_version("m", "highres")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((active.version, active.activated_at), (2, Some(T0 + 5)));
    let err = ds
        .set_active_model_version("m", "highres", Some(99), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, DatastoreError::NotFound(_)), "{err}");
    assert_eq!(
        ds.active_model_version("m", "highres")
            .await
            .unwrap()
            .unwrap()
            .version,
        2,
        "a refused activation changes nothing"
    );
    ds.set_active_model_version("m", "highres", None, T0 + 6)
        .await
        .unwrap();
    assert!(ds
        .active_model_version("m", "highres")
        .await
        .unwrap()
        .is_none());

    // lookups and the pruned mark
    let by_sha = ds
        .model_version_by_sha256("m", "highres", &"02".repeat(32))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_sha.version, 2);
    assert!(ds.model_version("m", "highres", 7).await.unwrap().is_none());
    ds.mark_model_version_pruned(by_sha.id, T0 + 7)
        .await
        .unwrap();
    ds.mark_model_version_pruned(by_sha.id, T0 + 8)
        .await
        .unwrap();
    let pruned = ds.model_version("m", "highres", 2).await.unwrap().unwrap();
    assert_eq!(pruned.pruned_at, Some(T0 + 7), "the first prune time stays");

    let bad = ds
        .record_model_version(
            &NewModelVersion {
                sha256: "abc".into(),
                ..new("highres", 4, "upload")
            },
            true,
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(bad, DatastoreError::Invalid(_)), "{bad}");
}

async fn final_label_revisions(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    for id in ["a", "b", "c"] {
        ds.add_image(
            id,
            ".nii.gz",
            Source::Bytes(b"img".to_vec()),
            Map::new(),
            None,
        )
        .await
        .unwrap();
    }
    let final_ = ferrolabel_datastore::FINAL_TAG;
    for _ in 0..2 {
        ds.save_label(
            "b",
            final_,
            ".nii.gz",
            Source::Bytes(b"l".to_vec()),
            Map::new(),
            None,
        )
        .await
        .unwrap();
    }
    ds.save_label(
        "a",
        final_,
        ".nii.gz",
        Source::Bytes(b"l".to_vec()),
        Map::new(),
        None,
    )
    .await
    .unwrap();
    ds.save_label(
        "c",
        "original",
        ".nii.gz",
        Source::Bytes(b"l".to_vec()),
        Map::new(),
        None,
    )
    .await
    .unwrap();
    let got = ds.final_label_revisions().await.unwrap();
    assert_eq!(
        got,
        vec![
            TrainedOn {
                image: "a".into(),
                rev: Some(1)
            },
            TrainedOn {
                image: "b".into(),
                rev: Some(2)
            },
        ]
    );
}

async fn two_handles_record_at_once(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let a = db.open(tmp.path()).await;
    let b = db.open(tmp.path()).await;
    let mut tasks = Vec::new();
    for n in 0..8u8 {
        let ds = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            ds.record_model_version(&new("highres", n + 1, "upload"), true, T0 + n as i64)
                .await
                .unwrap()
                .0
                .version
        }));
    }
    let mut nums = Vec::new();
    for t in tasks {
        nums.push(t.await.unwrap());
    }
    nums.sort();
    assert_eq!(nums, (1..=8).collect::<Vec<i64>>());
    let list = a.model_versions("m", "highres").await.unwrap();
    assert_eq!(list.iter().filter(|v| v.active).count(), 1);
}

on_both!(
    record_activate_list,
    final_label_revisions,
    two_handles_record_at_once
);
