//! Shared helpers of the DICOMweb tests: the Orthanc harness and DICOM series of
//! `ferrolabel-testkit` (a real Orthanc on loopback, killed on drop; under `CI=true` a missing
//! Orthanc fails the test), plus the DICOMweb client for it.

#![allow(dead_code)]

use ferrolabel_dicomweb::{Auth, DicomWebClient, DicomWebConfig};
pub use ferrolabel_testkit::{
    new_uid, shared_series_with_uids, write_small_series, Orthanc, Written, PASSWORD, USER,
};

/// The ferrolabel DICOMweb client for a test [`Orthanc`].
pub trait OrthancClient {
    /// Settings for this Orthanc with the test user.
    fn config(&self) -> DicomWebConfig;
    /// A client with the test user.
    fn client(&self) -> DicomWebClient;
}

impl OrthancClient for Orthanc {
    fn config(&self) -> DicomWebConfig {
        let mut c = DicomWebConfig::new(&self.base_url()).unwrap();
        c.auth = Auth::Basic {
            username: USER.into(),
            password: PASSWORD.into(),
        };
        c
    }

    fn client(&self) -> DicomWebClient {
        DicomWebClient::new(self.config()).unwrap()
    }
}

/// Stores every file of `w` in one STOW-RS request.
pub async fn store(client: &DicomWebClient, w: &Written) {
    let bytes: Vec<Vec<u8>> = w.files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let parts: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let out = client
        .store_instances(Some(&w.study), &parts)
        .await
        .expect("STOW-RS");
    assert_eq!(out.stored.len(), w.files.len());
}

/// A multi-thread tokio runtime for the async client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
