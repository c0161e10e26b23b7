//! Support of `pacs.rs`: the Orthanc harness and DICOM series of `ferrolabel-testkit` (a
//! real Orthanc on loopback that can be stopped and started again on the same port and storage;
//! under `CI=true` a missing Orthanc fails the test), QIDO/WADO reads of it, and a `ferrolabel`
//! served in-process with `--studies http://127.0.0.1:PORT/dicom-web`.

pub use ferrolabel_testkit::{
    shared_series_with_uids, write_small_series, Orthanc, Written, PASSWORD, USER,
};

use crate::common::{self, Opts};
use crate::server::Server;

/// Reads of a test [`Orthanc`] that decode DICOMweb answers.
pub trait PacsOrthanc {
    /// QIDO-RS series of `study` with `Modality=SEG` (their SeriesInstanceUIDs).
    fn seg_series(&self, study: &str) -> Vec<String>;
    /// The instances of a series, WADO-RS (Part 10 bytes each).
    fn retrieve(&self, study: &str, series: &str) -> Vec<Vec<u8>>;
}

impl PacsOrthanc for Orthanc {
    fn seg_series(&self, study: &str) -> Vec<String> {
        let r = self
            .get(&format!("/dicom-web/studies/{study}/series?Modality=SEG"))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "QIDO: {}", r.status());
        let v: serde_json::Value = r.json().unwrap_or(serde_json::Value::Array(vec![]));
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["0020000E"]["Value"][0].as_str().map(String::from))
            .collect()
    }

    fn retrieve(&self, study: &str, series: &str) -> Vec<Vec<u8>> {
        let r = self
            .get(&format!("/dicom-web/studies/{study}/series/{series}"))
            .header(
                "Accept",
                "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
            )
            .send()
            .unwrap();
        assert!(r.status().is_success(), "WADO: {}", r.status());
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let boundary = common::boundary_of(&ct);
        let body = r.bytes().unwrap();
        common::parse_multipart(&body, &boundary)
            .into_iter()
            .map(|p| p.body)
            .collect()
    }
}

/// A `ferrolabel` (in-process) serving the PACS `orthanc` (basic auth, cache in a temporary
/// folder, the small test bundle), with the `extra` arguments; its cache folder (series/ and
/// datastore/) is [`Server::studies`].
pub fn pacs_server(orthanc: &Orthanc, extra: &[&str]) -> Server {
    let cache = tempfile::Builder::new()
        .prefix("ferrolabel-pacs-")
        .tempdir()
        .unwrap();
    let mut args: Vec<String> = vec![
        "--dicomweb-username".into(),
        USER.into(),
        "--dicomweb-password".into(),
        PASSWORD.into(),
        "--dicomweb-cache-path".into(),
        cache.path().display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Server::start_on(
        orthanc.base_url().into(),
        cache,
        Opts {
            with_example: false,
            args,
            ..Opts::new()
        },
    )
}
