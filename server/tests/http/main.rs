//! The route tests, in one test binary: each test starts `ferrolabel::serve` (the code of
//! `start_server`) in-process on a free port ([`server::Server`]) and speaks to it over real HTTP.
//! Tests that need a process boundary (a SIGKILLed server, training workers, the command line)
//! are in `tests/process/`.

#[path = "../common/mod.rs"]
mod common;
mod pacs_support;
mod server;

mod api;
mod auth;
mod dicom_bad;
mod dicom_seg;
mod dicom_upload;
mod engine_errors;
mod errors;
mod infer;
mod pacs;
mod precision;
mod scribbles;
mod versions;
mod workbench;
