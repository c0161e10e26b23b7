//! Object storage (`DatastoreOptions::storage`, issue 13): images, labels and revisions as
//! content-addressed blobs in a real S3 server (moto's, `testkit::S3Server`, on loopback), each
//! process with its own cache; two datastore handles on one database and one bucket (SQLite and
//! PostgreSQL) serve each other's files; a key is never overwritten; a storage that goes down
//! fails the save with nothing committed.

mod common;

use std::path::Path;
use std::sync::Arc;

use ferrolabel_datastore::{
    Datastore, DatastoreError, DatastoreOptions, NewModelVersion, StorageOptions,
};
use ferrolabel_testkit::S3Server;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use serde_json::Map;
use sha2::{Digest, Sha256};

use common::{run, Db};

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A fresh bucket on `s3`, its `s3://` URL with a prefix.
fn bucket(s3: &S3Server) -> (String, String) {
    let name = format!("t-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket(&name);
    let url = format!("s3://{name}/team");
    (name, url)
}

fn options(db: &Db, s3: &S3Server, url: &str, cache: Option<&Path>) -> DatastoreOptions {
    DatastoreOptions {
        storage: Some(StorageOptions {
            url: url.to_string(),
            cache_dir: cache.map(Path::to_path_buf),
            settings: s3.env(),
        }),
        ..db.options()
    }
}

/// A client of the bucket of its own (what an operator's tool sees).
fn client(s3: &S3Server, bucket: &str) -> Arc<dyn ObjectStore> {
    let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
    for (k, v) in s3.env() {
        b = b.with_config(
            k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>().unwrap(),
            v,
        );
    }
    Arc::new(b.build().unwrap())
}

async fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn labels_and_revisions_are_blobs_named_by_their_hash() {
    let Some(s3) = S3Server::shared() else { return };
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (name, url) = bucket(s3);
        let ds = Datastore::open(dir.path(), options(&Db::sqlite(), s3, &url, None))
            .await
            .unwrap();
        assert_eq!(ds.storage_url(), Some(url.as_str()));
        let (img, l1, l2) = (
            b"image-1".to_vec(),
            b"label-1".to_vec(),
            b"label-2".to_vec(),
        );
        ds.add_image("ct1", ".nii.gz", img.clone().into(), Map::new(), None)
            .await
            .unwrap();
        ds.save_label(
            "ct1",
            "final",
            ".nii.gz",
            l1.clone().into(),
            Map::new(),
            Some("a"),
        )
        .await
        .unwrap();
        ds.save_label(
            "ct1",
            "final",
            ".nii.gz",
            l2.clone().into(),
            Map::new(),
            Some("b"),
        )
        .await
        .unwrap();

        // every blob's key is the SHA-256 of its content, under the URL's prefix
        let mut want: Vec<String> = [&img, &l1, &l2]
            .iter()
            .map(|b| format!("team/sha256/{}", sha(b)))
            .collect();
        want.sort();
        assert_eq!(ds.storage_keys().await.unwrap(), want);
        // ... and the bucket holds those bytes
        let bucket = client(s3, &name);
        for b in [&img, &l1, &l2] {
            let key = Key::from(format!("team/sha256/{}", sha(b)));
            let got = bucket.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(&got[..], &b[..]);
        }
        // nothing of it in the studies folder: the content is the bucket's
        assert!(!dir.path().join("ct1.nii.gz").exists());
        assert!(!dir.path().join("labels/final/ct1.nii.gz").exists());

        // the label, its revisions and the image read back, also after the cache is emptied
        for round in 0..2 {
            assert_eq!(
                read(&ds.label_path("ct1", "final").await.unwrap()).await,
                l2
            );
            assert_eq!(read(&ds.image_path("ct1").await.unwrap()).await, img);
            let revs = ds.label_revisions("ct1", "final").await.unwrap();
            assert_eq!(revs.len(), 2, "round {round}");
            assert_eq!(revs[0].sha256, sha(&l1));
            assert_eq!(revs[1].sha256, sha(&l2));
            let p1 = ds.label_revision_path("ct1", "final", 1).await.unwrap();
            assert_eq!(read(&p1).await, l1);
            let pairs = ds.datalist_local().await.unwrap();
            assert_eq!(pairs.len(), 1);
            assert_eq!(read(&pairs[0].0).await, img);
            assert_eq!(read(&pairs[0].1).await, l2);
            std::fs::remove_dir_all(dir.path().join(".cache/objects")).unwrap();
            std::fs::create_dir_all(dir.path().join(".cache/objects")).unwrap();
        }

        // a reopen (the folder scan) keeps what has no file in the folder
        ds.close().await;
        let ds = Datastore::open(dir.path(), options(&Db::sqlite(), s3, &url, None))
            .await
            .unwrap();
        assert_eq!(ds.list_images().await.unwrap(), ["ct1"]);
        assert_eq!(read(&ds.label_path("ct1", "").await.unwrap()).await, l2);
        ds.close().await;
    });
}

/// Two handles ("two servers") with their own studies folders and caches, on one database and
/// one bucket: each serves the other's images, labels and revisions.
async fn two_handles(db: Db) {
    let Some(s3) = S3Server::shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db = match db.url {
        Some(_) => db,
        None => Db {
            url: Some(format!(
                "sqlite://{}",
                tmp.path().join("shared.db").display()
            )),
        },
    };
    let (_, url) = bucket(s3);
    let (sa, sb) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = Datastore::open(&sa, options(&db, s3, &url, None))
        .await
        .unwrap();
    let cache_b = tmp.path().join("cache-b");
    let b = Datastore::open(&sb, options(&db, s3, &url, Some(&cache_b)))
        .await
        .unwrap();
    a.add_image(
        "ct1",
        ".nii.gz",
        b"ct-bytes".to_vec().into(),
        Map::new(),
        None,
    )
    .await
    .unwrap();
    a.save_label(
        "ct1",
        "final",
        ".nii.gz",
        b"from a".to_vec().into(),
        Map::new(),
        None,
    )
    .await
    .unwrap();
    // b never saw these bytes: it fetches them into its own cache
    let p = b.label_path("ct1", "final").await.unwrap();
    assert!(p.starts_with(&cache_b), "{}", p.display());
    assert_eq!(read(&p).await, b"from a");
    assert_eq!(read(&b.image_path("ct1").await.unwrap()).await, b"ct-bytes");
    b.save_label(
        "ct1",
        "final",
        ".nii.gz",
        b"from b".to_vec().into(),
        Map::new(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        read(&a.label_path("ct1", "final").await.unwrap()).await,
        b"from b"
    );
    let revs = a.label_revisions("ct1", "final").await.unwrap();
    assert_eq!(revs.iter().map(|r| r.rev).collect::<Vec<_>>(), [1, 2]);
    let p1 = b.label_revision_path("ct1", "final", 1).await.unwrap();
    assert_eq!(read(&p1).await, b"from a");
    // b's folder scan leaves a's image and label alone (they have no file in b's folder)
    b.refresh().await.unwrap();
    assert_eq!(a.list_images().await.unwrap(), ["ct1"]);
    assert!(a.label("ct1", "final").await.unwrap().is_some());
    a.close().await;
    b.close().await;
}

#[test]
fn two_handles_on_one_sqlite_and_one_bucket() {
    run(two_handles(Db::sqlite()));
}

#[test]
fn two_handles_on_one_postgres_and_one_bucket() {
    if S3Server::shared().is_none() {
        return;
    }
    run(two_handles(Db::postgres()));
}

#[test]
fn a_key_is_never_overwritten() {
    let Some(s3) = S3Server::shared() else { return };
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (name, url) = bucket(s3);
        let ds = Datastore::open(dir.path(), options(&Db::sqlite(), s3, &url, None))
            .await
            .unwrap();
        ds.add_image("ct1", ".nii.gz", b"img".to_vec().into(), Map::new(), None)
            .await
            .unwrap();
        let bucket = client(s3, &name);
        // the same bytes saved twice: one blob, not written again
        let same = b"same label".to_vec();
        ds.save_label("ct1", "a", ".nii.gz", same.clone().into(), Map::new(), None)
            .await
            .unwrap();
        let key = Key::from(format!("team/sha256/{}", sha(&same)));
        let first = bucket.head(&key).await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100)); // S3 times have seconds
        ds.save_label("ct1", "b", ".nii.gz", same.clone().into(), Map::new(), None)
            .await
            .unwrap();
        let second = bucket.head(&key).await.unwrap();
        assert_eq!(first.last_modified, second.last_modified, "rewritten");

        // a key that already holds other bytes (planted here) is left as it is, and a reader
        // refuses the blob whose content does not match its name
        let new = b"new label".to_vec();
        let planted = Key::from(format!("team/sha256/{}", sha(&new)));
        bucket
            .put(&planted, PutPayload::from(b"tampered".to_vec()))
            .await
            .unwrap();
        ds.save_label("ct1", "c", ".nii.gz", new.clone().into(), Map::new(), None)
            .await
            .unwrap();
        let got = bucket.get(&planted).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"tampered", "an existing key was overwritten");
        std::fs::remove_dir_all(dir.path().join(".cache/objects")).unwrap();
        std::fs::create_dir_all(dir.path().join(".cache/objects")).unwrap();
        let err = ds.label_path("ct1", "c").await.unwrap_err();
        assert!(matches!(err, DatastoreError::Storage(_)), "{err}");
        ds.close().await;
    });
}

#[test]
fn a_storage_that_is_down_fails_the_save_and_commits_nothing() {
    // a server of its own, stopped mid-test
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (_, url) = bucket(&s3);
        let opts = options(&Db::sqlite(), &s3, &url, None);
        let ds = Datastore::open(dir.path(), opts.clone()).await.unwrap();
        ds.add_image("ct1", ".nii.gz", b"img".to_vec().into(), Map::new(), None)
            .await
            .unwrap();
        s3.stop();
        let err = ds
            .save_label(
                "ct1",
                "final",
                ".nii.gz",
                b"lost".to_vec().into(),
                Map::new(),
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, DatastoreError::Storage(_)), "{err}");
        assert!(ds.label("ct1", "final").await.unwrap().is_none());
        assert!(ds.label_revisions("ct1", "final").await.unwrap().is_empty());
        ds.close().await;
        // and a process does not start on a storage it cannot reach
        let err = Datastore::open(dir.path(), opts).await.unwrap_err();
        assert!(matches!(err, DatastoreError::Storage(_)), "{err}");
    });
}

/// Blobs put and fetched by callers (model versions) and the garbage collection: a blob no row
/// names is deleted once older than the grace period (a dry run only counts it); every blob a
/// row names stays — images, labels, every label revision, a model version whose file is kept
/// or that is active — and reads back after the cache is emptied.
async fn blobs_and_garbage(db: Db) {
    let Some(s3) = S3Server::shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_, url) = bucket(s3);
    let studies = tmp.path().join("studies");
    let ds = Datastore::open(&studies, options(&db, s3, &url, None))
        .await
        .unwrap();
    let blob = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        (p, sha(bytes))
    };
    // a caller's blob: put once (a second put leaves it), fetched to a path of the caller's
    let (w1, s1) = blob("w1.pt", b"weights one");
    assert!(ds.put_blob(&w1, &s1).await.unwrap());
    assert!(!ds.put_blob(&w1, &s1).await.unwrap());
    let back = tmp.path().join("fetched/w1.pt");
    ds.fetch_blob(&s1, &back).await.unwrap();
    assert_eq!(read(&back).await, b"weights one");
    let err = ds.fetch_blob(&sha(b"absent"), &back).await.unwrap_err();
    assert!(matches!(err, DatastoreError::NotFound(_)), "{err}");
    let err = ds.put_blob(&w1, "../../escape").await.unwrap_err();
    assert!(matches!(err, DatastoreError::Invalid(_)), "{err}");

    // rows: an image with two label revisions, an active model version (w1), a pruned one
    // (w2), an image removed (its blob no longer named), a blob never named (orphan)
    ds.add_image("ct1", ".nii.gz", b"img".to_vec().into(), Map::new(), None)
        .await
        .unwrap();
    for l in [b"rev one".as_slice(), b"rev two"] {
        ds.save_label(
            "ct1",
            "final",
            ".nii.gz",
            l.to_vec().into(),
            Map::new(),
            None,
        )
        .await
        .unwrap();
    }
    let version = |s: &str| NewModelVersion {
        model: "m".into(),
        resolution: "highres".into(),
        sha256: s.to_string(),
        ext: "pt".into(),
        size: 1,
        source: "upload".into(),
        metrics: serde_json::json!({}),
        ..NewModelVersion::default()
    };
    let (w2, s2) = blob("w2.pt", b"weights two");
    ds.put_blob(&w2, &s2).await.unwrap();
    let (v2, _) = ds
        .record_model_version(&version(&s2), true, 1)
        .await
        .unwrap();
    ds.record_model_version(&version(&s1), true, 2)
        .await
        .unwrap();
    ds.mark_model_version_pruned(v2.id, 3).await.unwrap();
    ds.add_image("ct2", ".nii.gz", b"gone".to_vec().into(), Map::new(), None)
        .await
        .unwrap();
    ds.remove_image("ct2").await.unwrap();
    let (orphan, so) = blob("orphan", b"nobody names me");
    ds.put_blob(&orphan, &so).await.unwrap();

    let key = |s: &str| format!("team/sha256/{s}");
    let mut garbage = vec![key(&s2), key(&sha(b"gone")), key(&so)];
    garbage.sort();
    let all = ds.storage_keys().await.unwrap();
    assert_eq!(all.len(), 7, "{all:?}");
    // within the grace period nothing goes
    let gc = ds
        .collect_blob_garbage(std::time::Duration::from_secs(3600), false)
        .await
        .unwrap();
    assert_eq!((gc.blobs, gc.referenced, gc.young), (7, 4, 3));
    assert!(gc.deleted.is_empty());
    // a dry run names the garbage and deletes nothing
    let mut gc = ds
        .collect_blob_garbage(std::time::Duration::ZERO, true)
        .await
        .unwrap();
    gc.deleted.sort();
    assert_eq!(gc.deleted, garbage);
    assert_eq!(ds.storage_keys().await.unwrap(), all);
    // the real run deletes exactly that
    let mut gc = ds
        .collect_blob_garbage(std::time::Duration::ZERO, false)
        .await
        .unwrap();
    gc.deleted.sort();
    assert_eq!(gc.deleted, garbage);
    assert_eq!(
        gc.deleted_bytes,
        (b"weights two".len() + b"gone".len() + b"nobody names me".len()) as u64
    );
    let left = ds.storage_keys().await.unwrap();
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(left.iter().all(|k| !garbage.contains(k)), "{left:?}");
    // what rows name still reads back from the bucket
    std::fs::remove_dir_all(studies.join(".cache/objects")).unwrap();
    std::fs::create_dir_all(studies.join(".cache/objects")).unwrap();
    assert_eq!(read(&ds.image_path("ct1").await.unwrap()).await, b"img");
    assert_eq!(
        read(&ds.label_revision_path("ct1", "final", 1).await.unwrap()).await,
        b"rev one"
    );
    assert_eq!(
        read(&ds.label_path("ct1", "final").await.unwrap()).await,
        b"rev two"
    );
    ds.fetch_blob(&s1, &back).await.unwrap();
    ds.close().await;
}

#[test]
fn blobs_and_garbage_on_sqlite() {
    run(blobs_and_garbage(Db::sqlite()));
}

#[test]
fn blobs_and_garbage_on_postgres() {
    if S3Server::shared().is_none() {
        return;
    }
    run(blobs_and_garbage(Db::postgres()));
}

/// A garbage collection racing a save of bytes whose blob exists unnamed (older than the grace
/// period): the save finds the blob (no put), a collection starts before the save's row is
/// committed, and the blob must survive. PostgreSQL: the collection waits for the save's
/// claim (the shared `blob-gc` lock); SQLite: the collection deletes it inside its write
/// transaction and the save's release puts it back after its commit.
async fn gc_racing_a_save_of_the_same_bytes(db: Db) {
    let Some(s3) = S3Server::shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_, url) = bucket(s3);
    let studies = tmp.path().join("studies");
    let ds = Datastore::open(&studies, options(&db, s3, &url, None))
        .await
        .unwrap();
    // the collector: another process on the same database and bucket
    let gc_cache = tmp.path().join("gc-cache");
    let collector = Datastore::open(&studies, options(&db, s3, &url, Some(&gc_cache)))
        .await
        .unwrap();
    let file = tmp.path().join("w.pt");
    std::fs::write(&file, b"same bytes").unwrap();
    let s = sha(b"same bytes");
    // unnamed: an earlier save that failed, or a removed row's content
    assert!(ds.put_blob(&file, &s).await.unwrap());

    // the save: its blob claimed (found, not put again), its row not yet committed
    let claim = ds.claim_blob(&file, &s).await.unwrap();
    let gc = tokio::spawn(async move {
        collector
            .collect_blob_garbage(std::time::Duration::ZERO, false)
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    if db.url.is_some() {
        assert!(!gc.is_finished(), "the collection waits for the claim");
    }
    let v = NewModelVersion {
        model: "m".into(),
        resolution: "highres".into(),
        sha256: s.clone(),
        ext: "pt".into(),
        size: 10,
        source: "upload".into(),
        metrics: serde_json::json!({}),
        ..NewModelVersion::default()
    };
    ds.record_model_version(&v, true, 1).await.unwrap();
    claim.release().await.unwrap();
    let report = gc.await.unwrap().unwrap();
    assert_eq!(report.blobs, 1);
    // the row names the blob, and the bucket has it
    assert_eq!(
        ds.storage_keys().await.unwrap(),
        vec![format!("team/sha256/{s}")],
        "{report:?}"
    );
    let back = tmp.path().join("back.pt");
    ds.fetch_blob(&s, &back).await.unwrap();
    assert_eq!(read(&back).await, b"same bytes");
    // and a label save reusing an unnamed blob is covered the same way: after a collection
    // it still reads back
    let lab = b"label bytes".to_vec();
    ds.put_blob(
        &{
            let p = tmp.path().join("l");
            std::fs::write(&p, &lab).unwrap();
            p
        },
        &sha(&lab),
    )
    .await
    .unwrap();
    ds.add_image("ct1", ".nii.gz", b"img".to_vec().into(), Map::new(), None)
        .await
        .unwrap();
    ds.save_label(
        "ct1",
        "final",
        ".nii.gz",
        lab.clone().into(),
        Map::new(),
        None,
    )
    .await
    .unwrap();
    ds.collect_blob_garbage(std::time::Duration::ZERO, false)
        .await
        .unwrap();
    std::fs::remove_dir_all(studies.join(".cache/objects")).unwrap();
    std::fs::create_dir_all(studies.join(".cache/objects")).unwrap();
    assert_eq!(
        read(&ds.label_path("ct1", "final").await.unwrap()).await,
        lab
    );
    ds.close().await;
}

#[test]
fn gc_racing_a_save_on_sqlite() {
    run(gc_racing_a_save_of_the_same_bytes(Db::sqlite()));
}

#[test]
fn gc_racing_a_save_on_postgres() {
    if S3Server::shared().is_none() {
        return;
    }
    run(gc_racing_a_save_of_the_same_bytes(Db::postgres()));
}
