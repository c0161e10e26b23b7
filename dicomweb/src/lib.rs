//! `ferrolabel-dicomweb`: the DICOMweb side of ferrolabel's PACS datastore (issue 11 §2).
//!
//! - [`DicomWebConfig`]: MONAI Label's settings for a DICOMweb datastore (base URL
//!   `http(s)://HOST/dicom-web`, basic or bearer credentials, QIDO/WADO/STOW path prefixes,
//!   search filter, fetch mode, timeouts, limits);
//! - [`DicomWebClient`] (async `reqwest`, so the server never blocks its actix workers):
//!   QIDO-RS listings paged with `limit`/`offset` ([`DicomWebClient::list_ct_series`]) and SEG
//!   series that reference a source series ([`DicomWebClient::list_seg_series`]); WADO-RS
//!   retrieval of a series streamed part by part into files and assembled with
//!   `ferrolabel-dicom` on a blocking thread ([`DicomWebClient::retrieve_series`]); STOW-RS
//!   storage of DICOM SEGs ([`DicomWebClient::store_instances`], [`DicomWebClient::store_file`]);
//! - [`SeriesCache`]: converted series on disk, bounded in bytes, least recently used out.
//!
//! Everything a PACS answers is untrusted: every request has a connect, read and total timeout,
//! answers are bounded, and every failure is a [`DicomWebError`] that a server maps to 502/504
//! (the PACS's fault) or 422 (a series that is not a usable CT). DICOM is parsed by dicom-rs
//! (through `ferrolabel-dicom`), the DICOM JSON model by `serde_json`.

mod cache;
mod client;
mod config;
mod error;
mod frames;
pub mod model;
pub mod multipart;
mod wado;

pub use cache::{CachedSeries, SeriesCache};
pub use client::{DicomWebClient, RetrievedFiles, StoreOutcome};
pub use config::{Auth, DicomWebConfig, FetchMode};
pub use error::{DicomWebError, Result};
pub use model::{SegSeries, SeriesSummary};
