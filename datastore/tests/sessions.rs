//! Session store tests in temp folders; shared sessions through object storage against moto's
//! S3 server (`testkit::S3Server`) on SQLite and PostgreSQL.

mod common;

use std::fs;

use ferrolabel_datastore::sessions::{SessionInfo, META_FILE, SHARED_MARK};
use ferrolabel_datastore::StorageOptions;
use ferrolabel_datastore::{Datastore, DatastoreError, DatastoreOptions, Sessions, Source};
use ferrolabel_testkit::S3Server;

use common::{run, Db};

fn file(name: &str, body: &str) -> (String, Source) {
    (name.to_string(), Source::Bytes(body.as_bytes().to_vec()))
}

/// Rewrites a session's meta.info as if it was last used `ago` seconds ago.
fn age(info: &SessionInfo, ago: i64) {
    let mut old = info.clone();
    old.last_access_ts -= ago;
    fs::write(info.path.join(META_FILE), serde_json::to_vec(&old).unwrap()).unwrap();
}

#[tokio::test]
async fn create_get_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let sessions = Sessions::open(&tmp.path().join("sessions"), 7200)
        .await
        .unwrap();
    let info = sessions
        .create(vec![file("/home/me/tmp/abc.nii.gz", "volume")], 0)
        .await
        .unwrap();
    assert_eq!(info.expiry, 7200, "expiry 0 -> max");
    assert_eq!(info.path, sessions.root().join(&info.name));
    assert_eq!(info.image, info.path.join("abc.nii.gz"));
    assert_eq!(fs::read(&info.image).unwrap(), b"volume");
    assert!(info.meta.is_empty());
    let line = fs::read_to_string(info.path.join(META_FILE)).unwrap();
    assert_eq!(line.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "name",
            "path",
            "image",
            "meta",
            "create_ts",
            "last_access_ts",
            "expiry"
        ]
    );

    assert_eq!(
        sessions.get(&info.name, false).await.unwrap(),
        Some(info.clone())
    );
    age(&info, 100);
    let got = sessions.get(&info.name, true).await.unwrap().unwrap();
    assert!(got.last_access_ts >= info.last_access_ts, "update_ts bumps");
    let reread = sessions.get(&info.name, false).await.unwrap().unwrap();
    assert_eq!(reread.last_access_ts, got.last_access_ts, "and persists");

    assert_eq!(
        sessions.remove(&info.name).await.unwrap().map(|i| i.name),
        Some(info.name.clone())
    );
    assert!(!info.path.exists());
    assert_eq!(sessions.remove(&info.name).await.unwrap(), None);
    assert_eq!(sessions.get(&info.name, false).await.unwrap(), None);
}

#[tokio::test]
async fn multiple_files_make_a_folder_image() {
    let tmp = tempfile::tempdir().unwrap();
    let sessions = Sessions::open(tmp.path(), 3600).await.unwrap();
    let upload = tmp.path().join("streamed.part");
    fs::write(&upload, b"s2").unwrap();
    let info = sessions
        .create(
            vec![
                file("C:\\dicom\\1.dcm", "s1"),
                ("2.dcm".into(), Source::File(upload.clone())),
            ],
            30,
        )
        .await
        .unwrap();
    assert_eq!(info.expiry, 30);
    assert!(info.image.is_dir());
    assert_eq!(fs::read(info.image.join("1.dcm")).unwrap(), b"s1");
    assert_eq!(fs::read(info.image.join("2.dcm")).unwrap(), b"s2");
    assert!(!upload.exists(), "temp upload moved");
    assert!(sessions.get(&info.name, false).await.unwrap().is_some());
}

#[tokio::test]
async fn expiry_rules_and_cleanup() {
    let tmp = tempfile::tempdir().unwrap();
    let small = Sessions::open(&tmp.path().join("a"), 60).await.unwrap();
    assert_eq!(small.max_expiry(), 3600, "max <= 60 -> 3600");
    assert_eq!(small.effective_expiry(-5), 3600);
    assert_eq!(small.effective_expiry(10_000), 3600);
    assert_eq!(small.effective_expiry(120), 120);

    let sessions = Sessions::open(&tmp.path().join("b"), 600).await.unwrap();
    let expired = sessions
        .create(vec![file("x.nii.gz", "x")], 100)
        .await
        .unwrap();
    let alive = sessions
        .create(vec![file("y.nii.gz", "y")], 100)
        .await
        .unwrap();
    let lost = sessions
        .create(vec![file("z.nii.gz", "z")], 100)
        .await
        .unwrap();
    age(&expired, 101);
    age(&alive, 99);
    fs::remove_file(&lost.image).unwrap();

    assert_eq!(sessions.get(&expired.name, false).await.unwrap(), None);
    assert!(!expired.path.exists(), "expired session removed on get");
    let expired2 = sessions
        .create(vec![file("x.nii.gz", "x")], 100)
        .await
        .unwrap();
    age(&expired2, 1000);
    assert_eq!(
        sessions.remove_expired().await.unwrap(),
        2,
        "expired + image vanished"
    );
    assert!(!lost.path.exists() && !expired2.path.exists());
    assert!(sessions.get(&alive.name, false).await.unwrap().is_some());
}

#[tokio::test]
async fn bad_input_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let sessions = Sessions::open(tmp.path(), 3600).await.unwrap();
    for id in ["../etc", "not-a-uuid", ""] {
        assert!(matches!(
            sessions.get(id, false).await,
            Err(DatastoreError::InvalidId(_))
        ));
        assert!(matches!(
            sessions.remove(id).await,
            Err(DatastoreError::InvalidId(_))
        ));
    }
    assert!(sessions.create(vec![], 0).await.is_err());
    for name in ["..", "dir/..", ".hidden", "meta.info"] {
        assert!(
            sessions.create(vec![file(name, "x")], 0).await.is_err(),
            "{name}"
        );
    }
    assert!(sessions
        .create(vec![file("a.dcm", "1"), file("/x/a.dcm", "2")], 0)
        .await
        .is_err());
    // Nothing but the root remains.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn half_built_sessions_are_removed_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join(".abc.123.tmp")).unwrap();
    fs::write(tmp.path().join(".abc.123.tmp/x.nii"), b"x").unwrap();
    Sessions::open(tmp.path(), 3600).await.unwrap();
    assert!(!tmp.path().join(".abc.123.tmp").exists());
}

/// Two servers' session stores on one database and one bucket (`Sessions::shared_through`): a
/// session created on A is served by B (fetched from the bucket into B's folder, one file and a
/// folder of files), an access on B counts on A, a removal on B removes it on A, and the expiry
/// is the database's for every server.
async fn shared_sessions(db: Db) {
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
    let bucket = format!("t-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket(&bucket);
    let opts = |cache: &str| DatastoreOptions {
        storage: Some(StorageOptions {
            url: format!("s3://{bucket}/team"),
            cache_dir: Some(tmp.path().join(cache)),
            settings: s3.env(),
        }),
        ..db.options()
    };
    let ds_a = Datastore::open(&tmp.path().join("a"), opts("ca"))
        .await
        .unwrap();
    let ds_b = Datastore::open(&tmp.path().join("b"), opts("cb"))
        .await
        .unwrap();
    let a = Sessions::open(&tmp.path().join("sa"), 3600)
        .await
        .unwrap()
        .shared_through(&ds_a);
    let b = Sessions::open(&tmp.path().join("sb"), 3600)
        .await
        .unwrap()
        .shared_through(&ds_b);

    let one = a
        .create(vec![file("ct.nii.gz", "volume")], 0)
        .await
        .unwrap();
    let many = a
        .create(vec![file("1.dcm", "s1"), file("2.dcm", "s2")], 100)
        .await
        .unwrap();
    assert!(one.path.join(SHARED_MARK).exists());
    // the files are blobs
    assert_eq!(ds_a.storage_keys().await.unwrap().len(), 3);

    // B serves both, fetched into its own folder
    let got = b
        .get(&one.name, false)
        .await
        .unwrap()
        .expect("B finds A's session");
    assert_eq!(got.path, b.root().join(&one.name));
    assert_eq!(got.image, got.path.join("ct.nii.gz"));
    assert_eq!(fs::read(&got.image).unwrap(), b"volume");
    assert_eq!((got.create_ts, got.expiry), (one.create_ts, one.expiry));
    // last used 50 s ago (in the database); B's access with update_ts counts on A
    let mut aged = serde_json::to_value(&many).unwrap();
    aged["last_access_ts"] = (many.last_access_ts - 50).into();
    aged["files_in_folder"] = true.into();
    assert!(ds_a
        .set_blob_ref_info("session", &many.name, &aged)
        .await
        .unwrap());
    let got = b.get(&many.name, true).await.unwrap().unwrap();
    assert!(got.last_access_ts >= many.last_access_ts);
    assert!(got.image.is_dir());
    assert_eq!(fs::read(got.image.join("2.dcm")).unwrap(), b"s2");
    assert_eq!(got.expiry, 100);
    let seen = a.get(&many.name, false).await.unwrap().unwrap();
    assert_eq!(seen.last_access_ts, got.last_access_ts);
    // B's copy lost its image: fetched again
    fs::remove_file(b.root().join(&one.name).join("ct.nii.gz")).unwrap();
    let again = b.get(&one.name, false).await.unwrap().unwrap();
    assert_eq!(fs::read(&again.image).unwrap(), b"volume");

    // removed on B: gone on A, A's copy too
    assert_eq!(
        b.remove(&one.name).await.unwrap().map(|i| i.name),
        Some(one.name.clone())
    );
    assert_eq!(a.get(&one.name, false).await.unwrap(), None);
    assert!(!one.path.exists());

    // aged in the database: expired for every server; A's sweep removes it, B's copy follows
    let mut old = serde_json::to_value(&many).unwrap();
    old["last_access_ts"] = (many.last_access_ts - 1000).into();
    old["files_in_folder"] = true.into();
    assert!(ds_a
        .set_blob_ref_info("session", &many.name, &old)
        .await
        .unwrap());
    assert_eq!(a.remove_expired().await.unwrap(), 1);
    assert!(!many.path.exists());
    assert!(ds_b
        .blob_refs("session", &many.name)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(b.get(&many.name, false).await.unwrap(), None);
    assert!(!b.root().join(&many.name).exists());

    // a store without object storage keeps its sessions to itself
    let plain = Db::sqlite().open(&tmp.path().join("plain")).await;
    let local = Sessions::open(&tmp.path().join("sl"), 3600)
        .await
        .unwrap()
        .shared_through(&plain);
    let s = local.create(vec![file("x.nii.gz", "x")], 0).await.unwrap();
    assert!(!s.path.join(SHARED_MARK).exists());
    assert_eq!(b.get(&s.name, false).await.unwrap(), None);
}

#[test]
fn shared_sessions_on_sqlite() {
    run(shared_sessions(Db::sqlite()));
}

#[test]
fn shared_sessions_on_postgres() {
    if S3Server::shared().is_none() {
        return;
    }
    run(shared_sessions(Db::postgres()));
}
