//! The DICOMweb client against a real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`):
//! STOW-RS loading, QIDO-RS paging, WADO-RS retrieval assembled like local files, a SEG written
//! by ferrolabel-dicom stored, listed as referencing its source and read back, the cache, and
//! a stopped PACS.

mod common;

use common::{
    runtime, shared_series_with_uids, store, write_small_series, Orthanc, OrthancClient, Written,
    PASSWORD,
};
use dicom_dictionary_std::tags;
use ferrolabel_dicom::seg::{write_binary_seg, SegOptions, Structure};
use ferrolabel_dicom::{assemble_paths, AssembleOptions};
use ferrolabel_dicomweb::{Auth, DicomWebClient, DicomWebError, SeriesCache};

fn local(w: &Written) -> ferrolabel_dicom::Series {
    assemble_paths(&w.files, &AssembleOptions::default()).unwrap()
}

#[test]
fn qido_pages_through_ct_series_and_wado_assembles_like_local_files() {
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let shared = shared_series_with_uids(&work.path().join("shared"));
    let study = common::new_uid();
    let small: Vec<Written> = (0..4)
        .map(|i| {
            write_small_series(
                &work.path().join(format!("small{i}")),
                &study,
                "CT",
                3 + i,
                "FL-0002",
                &format!("small {i}"),
            )
        })
        .collect();
    let mr = write_small_series(&work.path().join("mr"), &study, "MR", 2, "FL-0002", "an MR");
    let rt = runtime();
    rt.block_on(async {
        let client = orthanc.client();
        store(&client, &shared).await;
        for w in &small {
            store(&client, w).await;
        }
        store(&client, &mr).await;

        // pages of 2: five CT series take three pages; the MR series is filtered out
        let mut config = orthanc.config();
        config.page_size = 2;
        let paged = DicomWebClient::new(config).unwrap();
        let listed = paged.list_ct_series().await.unwrap();
        assert_eq!(listed.len(), 5, "{listed:#?}");
        let mut all = client.list_ct_series().await.unwrap();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort_by(|a, b| a.series_instance_uid.cmp(&b.series_instance_uid));
        all.sort_by(|a, b| a.series_instance_uid.cmp(&b.series_instance_uid));
        assert_eq!(listed_sorted, all, "paging changes nothing");
        let s = listed
            .iter()
            .find(|s| s.series_instance_uid == shared.series)
            .expect("the shared series is listed");
        assert_eq!(s.study_instance_uid, shared.study);
        assert_eq!(s.number_of_instances, Some(20));
        assert_eq!(s.patient_id.as_deref(), Some("FL-SHARED"));
        assert_eq!(s.modality.as_deref(), Some("CT"));
        assert_eq!(s.description.as_deref(), Some("shared JPEG 2000"));
        for (i, w) in small.iter().enumerate() {
            let s = listed
                .iter()
                .find(|s| s.series_instance_uid == w.series)
                .expect("a small series is listed");
            assert_eq!(s.number_of_instances, Some(3 + i as u32));
        }
        assert!(listed.iter().all(|s| s.series_instance_uid != mr.series));
        let found = client.find_series(&small[2].series).await.unwrap().unwrap();
        assert_eq!(found.study_instance_uid, study);
        assert!(client.find_series("1.2.3.4.5").await.unwrap().is_none());

        // WADO-RS: the same volume as assembling the files here
        for w in [&shared, &small[3]] {
            let got = client
                .retrieve_series(&w.study, &w.series, &AssembleOptions::default())
                .await
                .unwrap();
            let want = local(w);
            assert_eq!(got.volume.dims, want.volume.dims);
            assert_eq!(got.volume.affine, want.volume.affine);
            assert!(got.volume.data == want.volume.data, "voxels differ");
            assert_eq!(got.info.slices.len(), w.files.len());
        }
        // an MR series retrieves but is not a CT volume: the series' fault, not the PACS's
        let err = client
            .retrieve_series(&mr.study, &mr.series, &AssembleOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, DicomWebError::Series { .. }), "{err:?}");
        assert!(!err.is_gateway_error());
        // an unknown series is the PACS's 404
        let err = client
            .retrieve_series(&study, "1.2.3.4", &AssembleOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, DicomWebError::Status { status: 404, .. }),
            "{err:?}"
        );

        // credentials: a wrong password is the PACS's 401, a bearer token too
        let mut bad = orthanc.config();
        bad.auth = Auth::Basic {
            username: common::USER.into(),
            password: format!("{PASSWORD}x"),
        };
        let err = DicomWebClient::new(bad)
            .unwrap()
            .list_ct_series()
            .await
            .unwrap_err();
        assert!(
            matches!(err, DicomWebError::Status { status: 401, .. }),
            "{err:?}"
        );
        let mut bearer = orthanc.config();
        bearer.auth = Auth::Bearer("not-a-token".into());
        let err = DicomWebClient::new(bearer)
            .unwrap()
            .list_ct_series()
            .await
            .unwrap_err();
        assert!(
            matches!(err, DicomWebError::Status { status: 401, .. }),
            "{err:?}"
        );
    });
}

#[test]
fn seg_stored_with_stow_is_listed_for_its_source_and_reads_back() {
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let study = common::new_uid();
    let src = write_small_series(
        &work.path().join("src"),
        &study,
        "CT",
        5,
        "FL-0003",
        "source",
    );
    let other = write_small_series(
        &work.path().join("other"),
        &study,
        "CT",
        3,
        "FL-0003",
        "other",
    );
    let rt = runtime();
    rt.block_on(async {
        let client = orthanc.client();
        store(&client, &src).await;
        store(&client, &other).await;
        let series = client
            .retrieve_series(&src.study, &src.series, &AssembleOptions::default())
            .await
            .unwrap();
        let [nx, ny, nz] = series.volume.dims;
        let mut labels = vec![0u8; nx * ny * nz];
        for k in 1..4 {
            for j in 2..8 {
                for i in 3..9 {
                    labels[i + nx * (j + ny * k)] = if k == 2 { 2 } else { 1 };
                }
            }
        }
        let structures = [
            Structure {
                value: 1,
                name: "liver".into(),
            },
            Structure {
                value: 2,
                name: "spleen".into(),
            },
        ];
        let seg =
            write_binary_seg(&series.info, &labels, &structures, &SegOptions::default()).unwrap();
        let seg_path = work.path().join("label.dcm");
        std::fs::write(&seg_path, &seg).unwrap();
        let stored = client
            .store_file(Some(&src.study), &seg_path)
            .await
            .unwrap();
        assert_eq!(stored.stored.len(), 1);

        let segs = client
            .list_seg_series(&src.study, &src.series)
            .await
            .unwrap();
        assert_eq!(segs.len(), 1, "{segs:#?}");
        assert_eq!(segs[0].referenced_series, vec![src.series.clone()]);
        assert_eq!(segs[0].instances, stored.stored);
        assert_eq!(segs[0].series.modality.as_deref(), Some("SEG"));
        assert!(client
            .list_seg_series(&src.study, &other.series)
            .await
            .unwrap()
            .is_empty());
        // SEG series are not images
        let images = client.list_ct_series().await.unwrap();
        assert!(images
            .iter()
            .all(|s| s.series_instance_uid != segs[0].series.series_instance_uid));

        // retrieved: the same pixel data, byte for byte
        let dir = work.path().join("seg-back");
        let files = client
            .retrieve_series_to_dir(&src.study, &segs[0].series.series_instance_uid, &dir)
            .await
            .unwrap();
        assert_eq!(files.paths.len(), 1);
        let back = dicom_object::open_file(&files.paths[0]).unwrap();
        let sent = dicom_object::open_file(&seg_path).unwrap();
        let px = |o: &dicom_object::DefaultDicomObject| {
            o.element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .into_owned()
        };
        assert!(!px(&sent).is_empty());
        assert!(px(&back) == px(&sent), "SEG pixel data changed in the PACS");
        let uid = |o: &dicom_object::DefaultDicomObject| {
            o.element(tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .into_owned()
        };
        assert_eq!(uid(&back), uid(&sent));
    });
}

#[test]
fn cache_fetches_once_keeps_the_bound_and_serves_without_the_pacs() {
    let Some(mut orthanc) = Orthanc::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let study = common::new_uid();
    let a = write_small_series(&work.path().join("a"), &study, "CT", 4, "FL-4", "a");
    let b = write_small_series(&work.path().join("b"), &study, "CT", 4, "FL-4", "b");
    let rt = runtime();
    let root = work.path().join("cache");
    rt.block_on(async {
        let client = orthanc.client();
        store(&client, &a).await;
        store(&client, &b).await;
        let opts = AssembleOptions::default();
        // a bound that holds one of these series, not two
        let cache = SeriesCache::open(&root, 1 << 20).unwrap();
        let ea = cache
            .get_or_fetch(&client, &a.study, &a.series, &opts)
            .await
            .unwrap();
        let size = ea.bytes;
        drop(cache);
        let cache = SeriesCache::open(&root, size + size / 2).unwrap();
        assert_eq!(
            cache.series(),
            vec![a.series.clone()],
            "kept across reopening"
        );
        let va = cache
            .get(&a.series)
            .unwrap()
            .load_volume(&Default::default())
            .unwrap();
        let la = local(&a);
        assert_eq!(va.data, la.volume.data);
        assert_eq!(va.dims, la.volume.dims);
        let diff = va
            .affine
            .iter()
            .flatten()
            .zip(la.volume.affine.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-4, "affine off by {diff}");
        let eb = cache
            .get_or_fetch(&client, &b.study, &b.series, &opts)
            .await
            .unwrap();
        assert_eq!(
            cache.series(),
            vec![b.series.clone()],
            "a was least recently used"
        );
        assert!(cache.total_bytes() <= size + size / 2);
        assert!(!root.join(&a.series).exists());
        assert_eq!(
            eb.load_series(&opts).unwrap().volume.data,
            local(&b).volume.data
        );

        // the PACS goes away: the cached series is still served, the evicted one is not
        orthanc.stop();
        let hit = cache
            .get_or_fetch(&client, &b.study, &b.series, &opts)
            .await
            .unwrap();
        assert_eq!(hit.image, eb.image);
        let err = cache
            .get_or_fetch(&client, &a.study, &a.series, &opts)
            .await
            .unwrap_err();
        assert!(matches!(err, DicomWebError::Unreachable { .. }), "{err:?}");
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers, vec![b.series.clone()], "no partial entry left");
    });
}

#[test]
fn a_stopped_pacs_is_unreachable() {
    let Some(mut orthanc) = Orthanc::start() else {
        return;
    };
    let client = orthanc.client();
    let rt = runtime();
    rt.block_on(async {
        assert!(client.list_ct_series().await.unwrap().is_empty());
    });
    orthanc.stop();
    rt.block_on(async {
        let err = client.list_ct_series().await.unwrap_err();
        assert!(matches!(err, DicomWebError::Unreachable { .. }), "{err:?}");
        assert!(err.is_gateway_error());
        let err = client
            .store_instances(Some("1.2.3"), &[b"x".as_slice()])
            .await
            .unwrap_err();
        assert!(matches!(err, DicomWebError::Unreachable { .. }), "{err:?}");
    });
}
