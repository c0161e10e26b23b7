//! Datastore tests against real databases: each test runs on SQLite (a file in its temp
//! folder) and on PostgreSQL (a fresh database on a throwaway cluster), see `common`.

mod common;

use std::fs;
use std::path::Path;

use common::Db;
use ferrolabel_datastore::{
    Backend, Datastore, DatastoreError, DatastoreOptions, Source, DATASTORE_JSON,
    JSON_MIRROR_DELAY, PRIVATE_DIR,
};
use serde_json::{json, Map, Value};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}

fn bytes(s: &str) -> Source {
    Source::Bytes(s.as_bytes().to_vec())
}

fn read_json(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join(DATASTORE_JSON)).unwrap()).unwrap()
}

async fn open_empty_folder(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let studies = tmp.path().join("studies");
    let ds = db.open(&studies).await;
    for d in ["labels/final", "labels/original", ".ferrolabel"] {
        assert!(studies.join(d).is_dir(), "{d}");
    }
    // the SQLite file only when the rows live there
    assert_eq!(
        studies.join(".ferrolabel/datastore.db").is_file(),
        db.backend() == Backend::Sqlite
    );
    assert!(ds.list_images().await.unwrap().is_empty());
    let st = ds.status().await.unwrap();
    assert_eq!(
        serde_json::to_value(&st).unwrap(),
        json!({"total":0,"completed":0,"label_tags":{}})
    );
    let expected = json!({"name":"new-dataset","description":"New Dataset","images_dir":".",
                          "labels_dir":"labels","objects":{}});
    assert_eq!(read_json(&studies), expected);
    assert_eq!(ds.datastore_json().await.unwrap(), expected);
    assert_eq!(ds.integrity_check().await.unwrap(), "ok");
}

/// SQLite only: the database file outside the studies folder.
#[tokio::test]
async fn db_can_live_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    // characters a URL would misread (the Any driver opens SQLite from a URL)
    let db = tmp.path().join("db 1/store %41?#.sqlite");
    let opts = DatastoreOptions {
        db_path: Some(db.clone()),
        ..Default::default()
    };
    let ds = Datastore::open(&tmp.path().join("s"), opts).await.unwrap();
    assert_eq!(ds.db_path(), db);
    assert_eq!(ds.backend(), Backend::Sqlite);
    assert!(db.is_file());
    assert!(!tmp.path().join("s/.ferrolabel/datastore.db").exists());
    ds.close().await;
    // or named by a sqlite: URL
    let other = tmp.path().join("other.db");
    let opts = DatastoreOptions {
        url: Some(format!("sqlite://{}", other.display())),
        ..Default::default()
    };
    let ds = Datastore::open(&tmp.path().join("s"), opts).await.unwrap();
    assert_eq!(ds.db_path(), other);
    assert!(other.is_file());
    let bad = DatastoreOptions {
        url: Some("mysql://localhost/x".into()),
        ..Default::default()
    };
    let err = Datastore::open(&tmp.path().join("s"), bad)
        .await
        .unwrap_err();
    assert!(matches!(err, DatastoreError::Invalid(_)), "{err}");
}

/// A folder as MONAI Label leaves it: images, labels/final, labels/original, the JSON model.
fn monai_folder(dir: &Path) {
    fs::create_dir_all(dir.join("labels/final")).unwrap();
    fs::create_dir_all(dir.join("labels/original")).unwrap();
    fs::write(dir.join("spleen_3.nii.gz"), b"img3").unwrap();
    fs::write(dir.join("spleen_8.nii.gz"), b"img8").unwrap();
    fs::write(dir.join("1.2.840.10008.nii.gz"), b"dicomish").unwrap();
    fs::write(dir.join("notes.txt"), b"not an image").unwrap();
    fs::write(dir.join("labels/final/spleen_3.nii.gz"), b"lab3").unwrap();
    fs::write(dir.join("labels/original/spleen_8.nrrd"), b"pred8").unwrap();
    fs::write(dir.join("labels/final/ghost.nii.gz"), b"orphan").unwrap();
    let model = json!({
        "name": "spleen", "description": "Spleen study", "images_dir": ".", "labels_dir": "labels",
        "objects": {
            "spleen_8": {"image": {"ext": ".nii.gz", "info": {"ts": 1699990000, "name": "spleen_8.nii.gz",
                                    "strategy": {"random": {"ts": 1699990005, "client_id": "u1"}}}},
                         "labels": {}},
            "spleen_3": {"image": {"ext": ".nii.gz", "info": {"ts": 1699990001, "name": "spleen_3.nii.gz",
                                    "dice": 0.93, "client_id": "user-xyz"}},
                         "labels": {"final": {"ext": ".nii.gz", "info": {"ts": 1699990100,
                                    "name": "spleen_3.nii.gz", "label_info": [{"name": "spleen", "idx": 1}],
                                    "model": "segmentation_spleen", "client_id": "user-xyz"}}}},
            "gone": {"image": {"ext": ".nii.gz", "info": {}}, "labels": {}}
        }
    });
    fs::write(
        dir.join(DATASTORE_JSON),
        serde_json::to_string_pretty(&model).unwrap(),
    )
    .unwrap();
}

async fn imports_monai_label_folder(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    monai_folder(dir);
    let ds = db.open(dir).await;
    // JSON order first, then files found by the scan; "gone" has no file; notes.txt no pattern.
    assert_eq!(
        ds.list_images().await.unwrap(),
        ["spleen_8", "spleen_3", "1.2.840.10008"]
    );
    let info = ds.image_info("spleen_3").await.unwrap().unwrap();
    assert_eq!(info["dice"], 0.93);
    assert_eq!(info["client_id"], "user-xyz");
    assert_eq!(
        info["path"],
        dir.canonicalize()
            .unwrap()
            .join("spleen_3.nii.gz")
            .to_str()
            .unwrap()
    );
    let info8 = ds.image_info("spleen_8").await.unwrap().unwrap();
    assert_eq!(info8["strategy"]["random"]["client_id"], "u1");
    let scanned = ds.image_info("1.2.840.10008").await.unwrap().unwrap();
    assert_eq!(scanned["name"], "1.2.840.10008.nii.gz");
    assert!(scanned["ts"].is_i64());

    let label = ds.label_info("spleen_3", "final").await.unwrap().unwrap();
    assert_eq!(label["label_info"], json!([{"name": "spleen", "idx": 1}]));
    assert_eq!(label["model"], "segmentation_spleen");
    let pred = ds.label("spleen_8", "original").await.unwrap().unwrap();
    assert_eq!(pred.ext, ".nrrd");
    assert_eq!(fs::read(&pred.path).unwrap(), b"pred8");
    assert!(ds.label("ghost", "final").await.unwrap().is_none());

    let st = ds.status().await.unwrap();
    assert_eq!(
        serde_json::to_value(&st).unwrap(),
        json!({"total": 3, "completed": 1, "label_tags": {"final": 1, "original": 1}})
    );
    // The rewritten JSON keeps the dataset name and the custom keys.
    let v = read_json(dir);
    assert_eq!(v["name"], "spleen");
    assert_eq!(v["objects"]["spleen_3"]["image"]["info"]["dice"], 0.93);
    assert!(v["objects"].get("gone").is_none());
}

async fn malformed_json_is_an_error_naming_the_file(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(DATASTORE_JSON), b"{\"objects\": [").unwrap();
    let err = Datastore::open(tmp.path(), db.options()).await.unwrap_err();
    assert!(matches!(err, DatastoreError::MalformedJson { .. }), "{err}");
    assert!(err.to_string().contains(DATASTORE_JSON), "{err}");
}

async fn files_changed_while_stopped_are_reconciled(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ds = db.open(dir).await;
    ds.add_image("a", ".nii.gz", bytes("A"), Map::new(), None)
        .await
        .unwrap();
    ds.add_image("b", ".nii.gz", bytes("B"), Map::new(), None)
        .await
        .unwrap();
    ds.save_label("b", "final", ".nii.gz", bytes("LB"), Map::new(), None)
        .await
        .unwrap();
    ds.close().await;
    drop(ds);

    fs::write(dir.join("c.nrrd"), b"C").unwrap();
    fs::write(dir.join("labels/final/a.nii.gz"), b"LA").unwrap();
    fs::create_dir_all(dir.join("labels/reviewer1")).unwrap();
    fs::write(dir.join("labels/reviewer1/c.nrrd"), b"RC").unwrap();
    fs::remove_file(dir.join("labels/final/b.nii.gz")).unwrap();

    let ds = db.open(dir).await;
    assert_eq!(ds.list_images().await.unwrap(), ["a", "b", "c"]);
    assert_eq!(ds.labeled_images().await.unwrap(), ["a"]);
    assert_eq!(
        ds.label_path("c", "reviewer1").await.unwrap(),
        dir.canonicalize().unwrap().join("labels/reviewer1/c.nrrd")
    );
    // The vanished label is gone from the model but its revision survives.
    assert!(ds.label("b", "final").await.unwrap().is_none());
    assert_eq!(ds.label_revisions("b", "final").await.unwrap().len(), 1);

    // The same through refresh(), without a restart.
    fs::remove_file(dir.join("a.nii.gz")).unwrap();
    fs::write(dir.join("d.nii"), b"D").unwrap();
    ds.refresh().await.unwrap();
    assert_eq!(ds.list_images().await.unwrap(), ["b", "c", "d"]);
    assert!(ds.label("a", "final").await.unwrap().is_none());
    let v = read_json(dir);
    assert!(v["objects"].get("a").is_none());
    assert_eq!(v["objects"]["d"]["image"]["ext"], ".nii");
}

async fn add_replace_remove_image(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ds = db.open(dir).await;
    let rec = ds
        .add_image(
            "img",
            ".nii",
            bytes("v1"),
            obj(json!({"client_id": "c1"})),
            Some("admin"),
        )
        .await
        .unwrap();
    assert_eq!(rec.info["name"], "img.nii");
    assert_eq!(rec.info["user"], "admin");
    assert_eq!(rec.info["client_id"], "c1");
    assert!(rec.info["ts"].is_i64());
    ds.add_image("other", ".nii.gz", bytes("o"), Map::new(), None)
        .await
        .unwrap();
    ds.save_label("img", "", ".nii.gz", bytes("L"), Map::new(), None)
        .await
        .unwrap();

    // Replace with another extension, from a temp file: the file moves, labels and order stay.
    let upload = dir.join("upload-tmp");
    fs::write(&upload, b"v2").unwrap();
    let rec = ds
        .add_image(
            "img",
            ".nii.gz",
            Source::File(upload.clone()),
            obj(json!({"k": 1})),
            None,
        )
        .await
        .unwrap();
    assert!(!upload.exists());
    assert!(rec.info.get("client_id").is_none(), "info replaced");
    assert_eq!(
        fs::read(ds.image_path("img").await.unwrap()).unwrap(),
        b"v2"
    );
    assert!(!dir.join("img.nii").exists(), "old extension removed");
    assert_eq!(ds.list_images().await.unwrap(), ["img", "other"]);
    assert!(ds.label("img", "final").await.unwrap().is_some());

    ds.update_image_info("img", obj(json!({"dice": 0.5, "k": 2})), Some("bob"))
        .await
        .unwrap();
    let info = ds.image_info("img").await.unwrap().unwrap();
    assert_eq!(
        (
            info["dice"].clone(),
            info["k"].clone(),
            info["user"].clone()
        ),
        (json!(0.5), json!(2), json!("bob"))
    );
    assert!(matches!(
        ds.update_image_info("nope", Map::new(), None).await,
        Err(DatastoreError::NotFound(_))
    ));

    ds.remove_image("img").await.unwrap();
    assert!(!dir.join("img.nii.gz").exists());
    assert!(!dir.join("labels/final/img.nii.gz").exists());
    assert!(matches!(
        ds.image_path("img").await,
        Err(DatastoreError::NotFound(_))
    ));
    assert!(matches!(
        ds.remove_image("img").await,
        Err(DatastoreError::NotFound(_))
    ));
    assert_eq!(ds.image_info("img").await.unwrap(), None);
    assert_eq!(ds.list_images().await.unwrap(), ["other"]);
    ds.flush_json().await.unwrap();
    assert!(read_json(dir)["objects"].get("img").is_none());
}

async fn label_saves_keep_revisions(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    ds.add_image("ct", ".nii.gz", bytes("img"), Map::new(), None)
        .await
        .unwrap();
    assert!(matches!(
        ds.save_label("missing", "final", ".nii.gz", bytes("x"), Map::new(), None)
            .await,
        Err(DatastoreError::NotFound(_))
    ));
    let r1 = ds
        .save_label(
            "ct",
            "final",
            ".nii.gz",
            bytes("first"),
            obj(json!({"model": "m1"})),
            Some("alice"),
        )
        .await
        .unwrap();
    let r2 = ds
        .save_label(
            "ct",
            "final",
            ".nii.gz",
            bytes("second"),
            obj(json!({"model": "m2"})),
            Some("bob"),
        )
        .await
        .unwrap();
    assert_eq!((r1.rev, r2.rev), (Some(1), Some(2)));
    assert_eq!(r2.info["name"], "ct.nii.gz");
    assert_eq!(
        fs::read(ds.label_path("ct", "final").await.unwrap()).unwrap(),
        b"second"
    );
    assert_eq!(
        ds.label_info("ct", "final").await.unwrap().unwrap()["model"],
        "m2"
    );

    let revs = ds.label_revisions("ct", "final").await.unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!((revs[0].rev, revs[0].parent_rev), (1, None));
    assert_eq!((revs[1].rev, revs[1].parent_rev), (2, Some(1)));
    assert_eq!(revs[0].author.as_deref(), Some("alice"));
    assert_eq!(revs[1].info["model"], "m2");
    assert_eq!(fs::read(&revs[0].path).unwrap(), b"first");
    assert_eq!(fs::read(&revs[1].path).unwrap(), b"second");
    // the dashboard's listing: newest first, across labels
    let recent = ds.recent_revisions(1).await.unwrap();
    assert_eq!((recent[0].image_id.as_str(), recent[0].rev), ("ct", 2));
    assert_eq!(ds.recent_revisions(10).await.unwrap()[1], revs[0]);
    assert_eq!(
        ds.label_revision_path("ct", "final", 1).await.unwrap(),
        revs[0].path
    );
    assert!(revs[0]
        .path
        .starts_with(ds.studies().join(PRIVATE_DIR).join("revisions/final/ct")));
    assert_eq!(
        revs[1].sha256,
        "16367aacb67a4a017c8da8ab95682ccb390863780f7114dda0a0e0c55644c7c4"
    );
    assert!(matches!(
        ds.label_revision_path("ct", "final", 3).await,
        Err(DatastoreError::NotFound(_))
    ));

    // A .seg.nrrd-style change of extension replaces the live file.
    ds.save_label("ct", "final", ".nrrd", bytes("third"), Map::new(), None)
        .await
        .unwrap();
    assert!(!ds.studies().join("labels/final/ct.nii.gz").exists());
    assert_eq!(ds.label("ct", "final").await.unwrap().unwrap().ext, ".nrrd");

    ds.update_label_info("ct", "final", obj(json!({"sum": 7})), Some("carol"))
        .await
        .unwrap();
    let info = ds.label_info("ct", "").await.unwrap().unwrap();
    assert_eq!(
        (info["sum"].clone(), info["user"].clone()),
        (json!(7), json!("carol"))
    );
    assert!(matches!(
        ds.update_label_info("ct", "nope", Map::new(), None).await,
        Err(DatastoreError::NotFound(_))
    ));

    // Removal is idempotent and keeps history; a later save starts a new chain.
    ds.remove_label("ct", "final").await.unwrap();
    ds.remove_label("ct", "final").await.unwrap();
    ds.remove_label("ct", "never").await.unwrap();
    assert!(matches!(
        ds.label_path("ct", "final").await,
        Err(DatastoreError::NotFound(_))
    ));
    assert_eq!(ds.status().await.unwrap().completed, 0);
    let r4 = ds
        .save_label("ct", "final", ".nrrd", bytes("fourth"), Map::new(), None)
        .await
        .unwrap();
    assert_eq!(r4.rev, Some(4));
    let revs = ds.label_revisions("ct", "final").await.unwrap();
    assert_eq!(revs.len(), 4);
    assert_eq!(revs[3].parent_rev, None);
    assert_eq!(fs::read(&revs[2].path).unwrap(), b"third");
}

async fn imported_label_is_preserved_before_replacement(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    monai_folder(tmp.path());
    let ds = db.open(tmp.path()).await;
    assert_eq!(
        ds.label("spleen_3", "final").await.unwrap().unwrap().rev,
        None
    );
    ds.save_label(
        "spleen_3",
        "final",
        ".nii.gz",
        bytes("new"),
        Map::new(),
        Some("me"),
    )
    .await
    .unwrap();
    let revs = ds.label_revisions("spleen_3", "final").await.unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!(fs::read(&revs[0].path).unwrap(), b"lab3");
    assert_eq!(revs[0].info["model"], "segmentation_spleen");
    assert_eq!(revs[0].author, None);
    assert_eq!((revs[1].rev, revs[1].parent_rev), (2, Some(1)));
}

async fn empty_tag_means_final_and_status(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    for id in ["a", "b", "c"] {
        ds.add_image(id, ".nii.gz", bytes(id), Map::new(), None)
            .await
            .unwrap();
    }
    let rec = ds
        .save_label("b", "", ".nii.gz", bytes("lb"), Map::new(), None)
        .await
        .unwrap();
    assert_eq!(rec.tag, "final");
    assert!(ds.studies().join("labels/final/b.nii.gz").is_file());
    ds.save_label("c", "original", ".nii.gz", bytes("lc"), Map::new(), None)
        .await
        .unwrap();
    ds.save_label("b", "original", ".nii.gz", bytes("ob"), Map::new(), None)
        .await
        .unwrap();

    assert_eq!(ds.labeled_images().await.unwrap(), ["b"]);
    assert_eq!(ds.unlabeled_images().await.unwrap(), ["a", "c"]);
    assert_eq!(
        serde_json::to_value(ds.status().await.unwrap()).unwrap(),
        json!({"total": 3, "completed": 1, "label_tags": {"final": 1, "original": 2}})
    );
    let studies = ds.studies().to_path_buf();
    assert_eq!(
        ds.datalist().await.unwrap(),
        [(
            studies.join("b.nii.gz"),
            studies.join("labels/final/b.nii.gz")
        )]
    );
    ds.remove_label("b", "").await.unwrap();
    assert_eq!(
        serde_json::to_value(ds.status().await.unwrap()).unwrap(),
        json!({"total": 3, "completed": 0, "label_tags": {"original": 2}})
    );
}

async fn invalid_ids_are_rejected(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    ds.add_image("ok", ".nii.gz", bytes("x"), Map::new(), None)
        .await
        .unwrap();
    for bad in ["../x", "a/b", "..", "a\\b", "", "a\0b", ".hidden", "x..y"] {
        let is_invalid =
            |r: Result<(), DatastoreError>| matches!(r, Err(DatastoreError::InvalidId(_)));
        assert!(
            is_invalid(
                ds.add_image(bad, ".nii", bytes("x"), Map::new(), None)
                    .await
                    .map(drop)
            ),
            "{bad:?}"
        );
        assert!(is_invalid(ds.remove_image(bad).await), "{bad:?}");
        assert!(is_invalid(ds.image_info(bad).await.map(drop)), "{bad:?}");
        assert!(is_invalid(ds.image_path(bad).await.map(drop)), "{bad:?}");
        assert!(
            is_invalid(
                ds.save_label(bad, "final", ".nii", bytes("x"), Map::new(), None)
                    .await
                    .map(drop)
            ),
            "{bad:?}"
        );
        assert!(
            is_invalid(ds.label_path(bad, "final").await.map(drop)),
            "{bad:?}"
        );
        if !bad.is_empty() {
            // Tags follow the same rules (an empty tag means "final").
            assert!(
                is_invalid(
                    ds.save_label("ok", bad, ".nii", bytes("x"), Map::new(), None)
                        .await
                        .map(drop)
                ),
                "tag {bad:?}"
            );
            assert!(is_invalid(ds.remove_label("ok", bad).await), "tag {bad:?}");
        }
    }
    assert!(matches!(
        ds.add_image("ok", "/../x", bytes("x"), Map::new(), None)
            .await,
        Err(DatastoreError::Invalid(_))
    ));
    // Nothing escaped the studies folder.
    assert!(!tmp.path().parent().unwrap().join("x.nii").exists());
    assert_eq!(ds.list_images().await.unwrap(), ["ok"]);
}

async fn json_round_trip(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ds = db.open(dir).await;
    ds.add_image(
        "z",
        ".nii.gz",
        bytes("z"),
        obj(json!({"client_id": "c", "nested": {"a": [1, 2]}})),
        Some("u"),
    )
    .await
    .unwrap();
    ds.add_image("a", ".nrrd", bytes("a"), Map::new(), None)
        .await
        .unwrap();
    ds.save_label(
        "z",
        "final",
        ".nii.gz",
        bytes("lz"),
        obj(json!({"label_info": [{"name": "liver", "idx": 1}]})),
        None,
    )
    .await
    .unwrap();
    ds.save_label("a", "original", ".nrrd", bytes("la"), Map::new(), None)
        .await
        .unwrap();
    let model = ds.datastore_json().await.unwrap();
    ds.flush_json().await.unwrap();
    let text = fs::read_to_string(dir.join(DATASTORE_JSON)).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), model);
    assert!(text.starts_with("{\n  \"name\": \"new-dataset\",\n  \"description\": \"New Dataset\""));
    let keys: Vec<_> = model["objects"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, ["z", "a"], "insertion order");
    ds.close().await;
    drop(ds);

    // A fresh database (as if the folder were copied elsewhere) re-imports the same model.
    fs::remove_dir_all(dir.join(PRIVATE_DIR)).unwrap();
    let ds = db.open(dir).await;
    assert_eq!(ds.datastore_json().await.unwrap(), model);
    assert_eq!(read_json(dir), model);
}

async fn leftover_temp_files_are_removed_at_open(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    db.open(dir).await.close().await;
    let leftovers = [
        dir.join(".img.1234.tmp"),
        dir.join("labels/final/.img.5678.tmp"),
        dir.join(".ferrolabel/revisions/.x.tmp"),
    ];
    for p in &leftovers {
        fs::write(p, b"partial").unwrap();
    }
    fs::write(dir.join(".hidden.nii.gz"), b"keep").unwrap();
    let ds = db.open(dir).await;
    for p in &leftovers {
        assert!(!p.exists(), "{}", p.display());
    }
    assert!(
        dir.join(".hidden.nii.gz").exists(),
        "only temp files are removed"
    );
    assert!(ds.list_images().await.unwrap().is_empty());
}

async fn interrupted_save_is_healed_at_open(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ds = db.open(dir).await;
    ds.add_image("k", ".nii.gz", bytes("k"), Map::new(), None)
        .await
        .unwrap();
    ds.save_label("k", "final", ".nii.gz", bytes("one"), Map::new(), None)
        .await
        .unwrap();
    ds.close().await;
    drop(ds);
    // Simulate a crash after both renames of a second save, before its commit.
    fs::write(dir.join(".ferrolabel/revisions/final/k/2.nii.gz"), b"two").unwrap();
    fs::write(dir.join("labels/final/k.nii.gz"), b"two").unwrap();

    let ds = db.open(dir).await;
    let revs = ds.label_revisions("k", "final").await.unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!((revs[1].rev, revs[1].parent_rev), (2, Some(1)));
    assert_eq!(revs[1].info["recovered"], true);
    assert_eq!(ds.label("k", "final").await.unwrap().unwrap().rev, Some(2));
    let r3 = ds
        .save_label("k", "final", ".nii.gz", bytes("three"), Map::new(), None)
        .await
        .unwrap();
    assert_eq!(r3.rev, Some(3));
    assert_eq!(
        ds.label_revisions("k", "final").await.unwrap()[2].parent_rev,
        Some(2)
    );
}

async fn concurrent_saves_lose_nothing(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    for i in 0..4 {
        ds.add_image(&format!("img{i}"), ".nii.gz", bytes("x"), Map::new(), None)
            .await
            .unwrap();
    }
    const TASKS: usize = 8;
    const SAVES: usize = 20;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let ds = ds.clone();
        handles.push(tokio::spawn(async move {
            // Two tasks per image share a key; tags alternate between shared and private.
            let image = format!("img{}", t % 4);
            for s in 0..SAVES {
                let tag = if s % 2 == 0 {
                    "final".to_string()
                } else {
                    format!("user{t}")
                };
                let body = format!("task{t}-save{s}");
                ds.save_label(
                    &image,
                    &tag,
                    ".nii.gz",
                    Source::Bytes(body.into_bytes()),
                    Map::new(),
                    Some(&format!("u{t}")),
                )
                .await
                .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    for i in 0..4 {
        let image = format!("img{i}");
        let finals = ds.label_revisions(&image, "final").await.unwrap();
        assert_eq!(finals.len(), 2 * SAVES / 2, "{image}");
        for (n, r) in finals.iter().enumerate() {
            assert_eq!(r.rev, n as i64 + 1);
            assert_eq!(r.parent_rev, if n == 0 { None } else { Some(n as i64) });
            let expect = format!(
                "task{}-save",
                r.author.as_deref().unwrap()[1..].parse::<usize>().unwrap()
            );
            assert!(String::from_utf8(fs::read(&r.path).unwrap())
                .unwrap()
                .starts_with(&expect));
        }
        let live = fs::read(ds.label_path(&image, "final").await.unwrap()).unwrap();
        assert_eq!(
            live,
            fs::read(&finals.last().unwrap().path).unwrap(),
            "latest is served"
        );
        for t in [i, i + 4] {
            let revs = ds
                .label_revisions(&image, &format!("user{t}"))
                .await
                .unwrap();
            assert_eq!(revs.len(), SAVES / 2);
        }
    }
    let st = ds.status().await.unwrap();
    assert_eq!(st.completed, 4);
    assert_eq!(st.label_tags.len(), 1 + TASKS);
    assert_eq!(ds.integrity_check().await.unwrap(), "ok");
    // The JSON mirror catches up with the last write by itself (rewritten in the background,
    // not in the request).
    let want = ds.datastore_json().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while read_json(tmp.path()) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "the JSON mirror never caught up"
        );
        tokio::time::sleep(JSON_MIRROR_DELAY).await;
    }
}

/// PostgreSQL only: two `Datastore`s (two pools, two sets of in-process locks: two servers) on
/// one database and one studies folder save the same (image, tag) at once. The cross-server
/// locks must make the revisions 1..N a chain without gaps or duplicates, every revision file
/// the body that was saved as it, and the served file the last one.
#[test]
fn two_servers_save_one_label_postgres() {
    let db = Db::postgres();
    common::run(async move {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let a = db.open(dir).await;
        let b = db.open(dir).await;
        a.add_image("ct", ".nii.gz", bytes("x"), Map::new(), None)
            .await
            .unwrap();
        const TASKS: usize = 6;
        const SAVES: usize = 5;
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let ds = if t % 2 == 0 { a.clone() } else { b.clone() };
            handles.push(tokio::spawn(async move {
                for s in 0..SAVES {
                    let body = format!("task{t}-save{s}");
                    ds.save_label("ct", "final", ".nii.gz", bytes(&body), Map::new(), None)
                        .await
                        .unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let n = TASKS * SAVES;
        for ds in [&a, &b] {
            let revs = ds.label_revisions("ct", "final").await.unwrap();
            assert_eq!(revs.len(), n);
            let mut bodies = std::collections::HashSet::new();
            for (i, r) in revs.iter().enumerate() {
                assert_eq!(r.rev, i as i64 + 1);
                assert_eq!(r.parent_rev, if i == 0 { None } else { Some(i as i64) });
                let body = String::from_utf8(fs::read(&r.path).unwrap()).unwrap();
                assert!(body.starts_with("task"), "{body}");
                assert!(bodies.insert(body), "two revisions hold one save");
            }
            let live = ds.label("ct", "final").await.unwrap().unwrap();
            assert_eq!(live.rev, Some(n as i64));
            assert_eq!(
                fs::read(&live.path).unwrap(),
                fs::read(&revs[n - 1].path).unwrap(),
                "the served file is the last revision"
            );
        }
        // whichever server writes the JSON mirror last writes every committed change
        a.flush_json().await.unwrap();
        b.flush_json().await.unwrap();
        assert_eq!(read_json(dir), a.datastore_json().await.unwrap());
    });
}

on_both!(
    open_empty_folder,
    imports_monai_label_folder,
    malformed_json_is_an_error_naming_the_file,
    files_changed_while_stopped_are_reconciled,
    add_replace_remove_image,
    label_saves_keep_revisions,
    imported_label_is_preserved_before_replacement,
    empty_tag_means_final_and_status,
    invalid_ids_are_rejected,
    json_round_trip,
    leftover_temp_files_are_removed_at_open,
    interrupted_save_is_healed_at_open,
    concurrent_saves_lose_nothing,
);
