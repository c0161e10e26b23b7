//! Fetching by frame (MONAI Label's `dicomweb_fetch_by_frame`) against a real Orthanc: the
//! series' metadata and each instance's frames are rebuilt into files that assemble to the same
//! volume as the files themselves, for the shipped JPEG 2000 series (encapsulated frames in
//! their stored syntax) and a small uncompressed one (native frames).

mod common;

use common::{
    runtime, shared_series_with_uids, store, write_small_series, Orthanc, OrthancClient, Written,
};
use ferrolabel_dicom::{assemble_paths, AssembleOptions};
use ferrolabel_dicomweb::{DicomWebClient, FetchMode};

fn local(w: &Written) -> ferrolabel_dicom::Series {
    assemble_paths(&w.files, &AssembleOptions::default()).unwrap()
}

#[test]
fn fetch_by_frame_assembles_like_local_files() {
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let shared = shared_series_with_uids(&work.path().join("shared"));
    let study = common::new_uid();
    let small = write_small_series(&work.path().join("small"), &study, "CT", 4, "FL-F", "small");
    let rt = runtime();
    rt.block_on(async {
        let client = orthanc.client();
        store(&client, &shared).await;
        store(&client, &small).await;
        let mut config = orthanc.config();
        config.fetch_mode = FetchMode::Frame;
        let by_frame = DicomWebClient::new(config).unwrap();
        for w in [&shared, &small] {
            let want = local(w);
            let got = by_frame
                .retrieve_series(&w.study, &w.series, &AssembleOptions::default())
                .await
                .unwrap_or_else(|e| panic!("fetching {} by frame: {e}", w.series));
            assert_eq!(got.volume.dims, want.volume.dims);
            for (a, b) in got
                .volume
                .affine
                .iter()
                .flatten()
                .zip(want.volume.affine.iter().flatten())
            {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{:?} vs {:?}",
                    got.volume.affine,
                    want.volume.affine
                );
            }
            assert!(got.volume.data == want.volume.data, "voxels differ");
            assert_eq!(got.info.slices.len(), w.files.len());
            assert_eq!(
                got.info.frame_of_reference_uid,
                want.info.frame_of_reference_uid
            );
        }
        // an unknown series: its metadata is a 404 from the PACS
        let err = by_frame
            .retrieve_series(&study, "1.2.3.4", &AssembleOptions::default())
            .await
            .unwrap_err();
        assert!(err.is_gateway_error(), "{err:?}");
    });
}
