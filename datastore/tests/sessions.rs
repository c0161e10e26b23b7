//! Session store tests in temp folders.

use std::fs;

use ferrolabel_datastore::sessions::{SessionInfo, META_FILE};
use ferrolabel_datastore::{DatastoreError, Sessions, Source};

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
