//! The DICOMweb (PACS) datastore against a real Orthanc (Debian's `orthanc` +
//! `orthanc-dicomweb`), with `ferrolabel start_server --studies http://127.0.0.1:PORT/dicom-web`:
//! the CT series are the images (the MR is not), nothing is fetched by the listing, an image is
//! fetched with WADO-RS on first use (inference on the shared JPEG 2000 series), a `final`
//! label goes back as a DICOM SEG that Orthanc holds and that decodes to the label's voxels, a
//! SEG already in Orthanc becomes the `final` label of its series, a frozen PACS is a 504 and a
//! stopped one a 502 with a detail, and a label saved while Orthanc is down is kept and stored
//! as a SEG once Orthanc is back. One Orthanc and one server for the whole flow.

use crate::common;
use crate::pacs_support;
use crate::server::Server;
use std::time::{Duration, Instant};

use crate::pacs_support::{
    pacs_server, shared_series_with_uids, write_small_series, Orthanc, PacsOrthanc,
};
use ferrolabel_dicom::seg::{read_seg, write_binary_seg, SegOptions, Structure};
use ferrolabel_dicom::{assemble_dir, AssembleOptions, SeriesInfo};
use ferrolabel_imaging::{encode_label_nifti, read_nifti_bytes, DataType, Header, Limits, Volume};
use serde_json::{json, Value};

const INFER: &str = "/infer/wholeBody_ct_segmentation";

fn structures() -> Vec<Structure> {
    vec![
        Structure {
            value: 1,
            name: "spleen".into(),
        },
        Structure {
            value: 5,
            name: "liver".into(),
        },
    ]
}

fn label_info() -> Value {
    json!({"label_info": [{"name": "spleen", "idx": 1}, {"name": "liver", "idx": 5}],
           "client_id": "pacs-test"})
}

fn series_info(dir: &std::path::Path) -> SeriesInfo {
    assemble_dir(dir, &AssembleOptions::default()).unwrap().info
}

fn image_of(s: &Server, id: &str) -> (u16, Vec<u8>, Value) {
    let r = s
        .http
        .get(s.url(&format!("/datastore/image?image={id}")))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().unwrap().to_vec();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, bytes, v)
}

/// A label map on `image`'s grid: a box of 1s and a box of 5s, shifted by `shift`.
fn label_on(image: &Volume, shift: usize) -> Vec<u8> {
    let [nx, ny, nz] = image.dims;
    let mut l = vec![0u8; nx * ny * nz];
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let v = if (nx / 4 + shift..nx / 2 + shift).contains(&i)
                    && (ny / 4..ny / 2).contains(&j)
                    && k >= nz / 3
                {
                    1
                } else if i > 3 * nx / 4 && j > 3 * ny / 4 && k < 2 * nz / 3 {
                    5
                } else {
                    0
                };
                l[i + nx * (j + ny * k)] = v;
            }
        }
    }
    l
}

fn save_final(s: &Server, id: &str, nifti: Vec<u8>) -> (u16, Value) {
    let form = common::form_with_file("label", "label.nii.gz", nifti, &label_info().to_string());
    let r = s
        .http
        .put(s.url(&format!("/datastore/label?image={id}&tag=final")))
        .multipart(form)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// Asserts two label maps are equal without printing them (they are large).
fn same_labels(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    let diff = got.iter().zip(want).filter(|(a, b)| a != b).count();
    assert_eq!(diff, 0, "{what}: {diff} voxels differ");
}

/// The labels of the SEG series `seg` of `study`, decoded onto `info`'s grid.
fn decode_seg(o: &Orthanc, study: &str, seg: &str, info: &SeriesInfo) -> Vec<u8> {
    let parts = o.retrieve(study, seg);
    assert_eq!(parts.len(), 1, "one SEG instance");
    read_seg(&parts[0], info, &structures()).unwrap().labels
}

fn wait_for_segs(o: &Orthanc, study: &str, n: usize) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let segs = o.seg_series(study);
        if segs.len() >= n {
            return segs;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{n} SEG series never reached Orthanc: {segs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pacs_datastore_round_trip() {
    let t0 = Instant::now();
    let lap = |what: &str| eprintln!("[{:>6.1} s] {what}", t0.elapsed().as_secs_f64());
    let Some(mut orthanc) = Orthanc::start() else {
        return;
    };
    lap("Orthanc up");
    let files = tempfile::tempdir().unwrap();
    let shared = shared_series_with_uids(&files.path().join("shared"));
    let small = write_small_series(
        &files.path().join("small"),
        &shared.study,
        "CT",
        6,
        "FL-SMALL",
        "small CT",
    );
    let mr = write_small_series(
        &files.path().join("mr"),
        &shared.study,
        "MR",
        3,
        "FL-MR",
        "an MR",
    );
    let spare = write_small_series(
        &files.path().join("spare"),
        &shared.study,
        "CT",
        4,
        "FL-SPARE",
        "never fetched",
    );
    orthanc.store(&shared.study, &shared.files);
    orthanc.store(&small.study, &small.files);
    orthanc.store(&mr.study, &mr.files);
    orthanc.store(&spare.study, &spare.files);
    // a SEG of the small series already in the PACS (another tool's)
    let small_info = series_info(&files.path().join("small"));
    let small_map: Vec<u8> = (0..small_info.rows * small_info.columns * small_info.slices.len())
        .map(|i| {
            if i % 7 == 0 {
                5
            } else if i % 5 == 0 {
                1
            } else {
                0
            }
        })
        .collect();
    let seg = write_binary_seg(
        &small_info,
        &small_map,
        &structures(),
        &SegOptions::default(),
    )
    .unwrap();
    let seg_path = files.path().join("other-tool-seg.dcm");
    std::fs::write(&seg_path, &seg).unwrap();
    orthanc.store(&small.study, &[seg_path]);

    let s = pacs_server(
        &orthanc,
        &[
            "--dicomweb-sync-interval",
            "1",
            "--dicomweb-read-timeout",
            "3",
        ],
    );
    lap("server up");

    // listing: the CT series, by SeriesInstanceUID; the MR and the SEG are not images
    let (st, all) = s.get_json("/datastore/?output=all");
    assert_eq!(st, 200, "{all}");
    let mut ids: Vec<&str> = all["objects"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    ids.sort();
    let mut want = vec![
        shared.series.as_str(),
        small.series.as_str(),
        spare.series.as_str(),
    ];
    want.sort();
    assert_eq!(ids, want, "{all}");
    let (_, stats) = s.get_json("/datastore/?output=stats");
    assert_eq!(stats["total"], 3, "{stats}");
    assert_eq!(
        stats["completed"], 0,
        "no label imported before first use: {stats}"
    );
    let series_cache = s.studies.path().join("series");
    assert!(
        std::fs::read_dir(&series_cache).unwrap().next().is_none(),
        "the listing fetched pixels"
    );

    // first use of the shared JPEG 2000 series: fetched with WADO-RS, as assembled locally
    let (st, image_bytes, v) = image_of(&s, &shared.series);
    assert_eq!(st, 200, "{v}");
    assert!(series_cache
        .join(&shared.series)
        .join("image.nii")
        .is_file());
    let image = read_nifti_bytes(&image_bytes, &Limits::default()).unwrap();
    let local = assemble_dir(&files.path().join("shared"), &AssembleOptions::default()).unwrap();
    assert_eq!(image.dims, local.volume.dims);
    assert!(
        image.data == local.volume.data,
        "WADO-RS + cache differs from the files assembled locally"
    );
    lap("first use");

    // inference on the small series (its first use)
    let form = reqwest::blocking::multipart::Form::new().text("params", "{}");
    let r = s
        .http
        .post(s.url(&format!("{INFER}?image={}&output=image", small.series)))
        .multipart(form)
        .send()
        .unwrap();
    let st = r.status().as_u16();
    let body = r.bytes().unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let inferred = read_nifti_bytes(&body, &Limits::default()).unwrap();
    assert_eq!(
        inferred.dims,
        [small_info.columns, small_info.rows, small_info.slices.len()],
        "the result lies on the series' grid"
    );
    lap("infer");

    // a SEG already in the PACS is the final label of its series once that series is used
    let r = s
        .http
        .get(s.url(&format!(
            "/datastore/label?label={}&tag=final",
            small.series
        )))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let imported = read_nifti_bytes(&r.bytes().unwrap(), &Limits::default()).unwrap();
    let imported: Vec<u8> = imported.data.iter().map(|v| *v as u8).collect();
    same_labels(
        &imported,
        &small_map,
        "the PACS SEG decoded onto its series",
    );
    let (_, stats) = s.get_json("/datastore/?output=stats");
    assert_eq!(stats["completed"], 1, "{stats}");

    // SEG out for a PACS image: the stored label, and an inference result, both on its series
    let r = s
        .http
        .get(s.url(&format!(
            "/datastore/label?label={}&tag=final&format=dicom_seg",
            small.series
        )))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let seg = r.bytes().unwrap();
    same_labels(
        &read_seg(&seg, &small_info, &structures()).unwrap().labels,
        &small_map,
        "the stored label as a SEG",
    );
    let form = reqwest::blocking::multipart::Form::new().text("params", "{}");
    let r = s
        .http
        .post(s.url(&format!("{INFER}?image={}&output=dicom_seg", small.series)))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("application/dicom"), "{ct}");
    let decoded = read_seg(&r.bytes().unwrap(), &small_info, &structures()).unwrap();
    assert_eq!(
        decoded.labels.len(),
        small_map.len(),
        "the SEG lies on the series' grid"
    );
    lap("SEG out");

    // a final label: stored locally and as a SEG in Orthanc that decodes to its voxels
    let header = image.header.clone().unwrap();
    let first = label_on(&image, 0);
    let (st, v) = save_final(
        &s,
        &shared.series,
        encode_label_nifti(&first, &header, true).unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["image"], shared.series.as_str());
    assert_eq!(v["pacs"]["stored"], true, "{v}");
    let segs = o_segs(&orthanc, &shared.study, &small, 1);
    let ours = v["pacs"]["seg_series"].as_str().unwrap();
    assert!(segs.iter().any(|x| x == ours), "{segs:?} lacks {ours}");
    same_labels(
        &decode_seg(&orthanc, &shared.study, ours, &local.info),
        &first,
        "the SEG in Orthanc",
    );

    assert!(
        series_cache
            .join(&shared.series)
            .join("series.json")
            .is_file(),
        "the source SeriesInfo is kept with the cached series (the retried SEG below uses it)"
    );
    lap("final label -> SEG");
    // a frozen PACS: 504 with a detail, no hang
    orthanc.pause();
    let (st, _, v) = image_of(&s, &spare.series);
    orthanc.resume();
    assert_eq!(st, 504, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("timed out"), "{v}");

    lap("504");
    // a stopped PACS: 502; a final label saved meanwhile is kept and STOWed once it is back
    orthanc.stop();
    let (st, _, v) = image_of(&s, &spare.series);
    assert_eq!(st, 502, "{v}");
    assert!(!v["detail"].as_str().unwrap_or_default().is_empty(), "{v}");
    let r = s
        .http
        .post(s.url(&format!("{INFER}?image={}", spare.series)))
        .multipart(reqwest::blocking::multipart::Form::new().text("params", "{}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let second = label_on(&image, 3);
    let nifti = encode_label_nifti(&second, &header, true).unwrap();
    let (st, v) = save_final(&s, &shared.series, nifti.clone());
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["pacs"]["stored"], false, "{v}");
    assert_eq!(v["pacs"]["queued"], true, "{v}");
    let r = s
        .http
        .get(s.url(&format!(
            "/datastore/label?label={}&tag=final",
            shared.series
        )))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.bytes().unwrap().to_vec(),
        nifti,
        "the label is kept while the PACS is down"
    );
    // a series never fetched: its label is saved too (the grid is checked when its SEG is made)
    let spare_local =
        assemble_dir(&files.path().join("spare"), &AssembleOptions::default()).unwrap();
    let spare_header = Header::new_3d(
        spare_local.volume.dims,
        DataType::U8,
        &spare_local.volume.affine,
    )
    .unwrap();
    let spare_map: Vec<u8> = (0..spare_local.volume.data.len())
        .map(|i| u8::from(i % 3 == 0))
        .collect();
    let (st, v) = save_final(
        &s,
        &spare.series,
        encode_label_nifti(&spare_map, &spare_header, true).unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["pacs"]["queued"], true, "{v}");
    lap("502, labels kept");
    orthanc.resume_service();
    let segs = wait_for_segs(&orthanc, &shared.study, 4);
    let spare_seg: Vec<&String> = segs
        .iter()
        .filter(|x| is_other(&orthanc, &shared.study, x, &spare.series))
        .collect();
    assert_eq!(spare_seg.len(), 1, "{segs:?}");
    same_labels(
        &decode_seg(&orthanc, &shared.study, spare_seg[0], &spare_local.info),
        &spare_map,
        "the SEG of the label saved while the PACS was down",
    );
    let newest: Vec<&String> = segs
        .iter()
        .filter(|x| {
            *x != ours && *x != spare_seg[0] && !is_other(&orthanc, &shared.study, x, &small.series)
        })
        .collect();
    assert_eq!(newest.len(), 1, "{segs:?}");
    same_labels(
        &decode_seg(&orthanc, &shared.study, newest[0], &local.info),
        &second,
        "the retried SEG in Orthanc",
    );
    lap("retried STOW");
}

/// Whether SEG series `seg` references `series`.
fn is_other(o: &Orthanc, study: &str, seg: &str, series: &str) -> bool {
    let r = o
        .get(&format!("/dicom-web/studies/{study}/series/{seg}/metadata"))
        .send()
        .unwrap();
    r.text().unwrap().contains(series)
}

/// The SEG series of `study` once `n` of ours plus the other tool's one are there.
fn o_segs(o: &Orthanc, study: &str, _small: &pacs_support::Written, n: usize) -> Vec<String> {
    wait_for_segs(o, study, n + 1)
}
