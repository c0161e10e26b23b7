//! The `ferrolabel` server as a library: the HTTP protocol ([`create_app`], [`routes`]), the CLI
//! subcommands ([`commands`]) and configuration ([`config`]). The binary (`main.rs`) only parses the
//! command line; tests build the same app in-process with [`create_app`], or the whole server with
//! [`serve`] (as `start_server` does).
//!
//! Depends on the library crates (apps, models, datastore, imaging, dicom, dicomweb); none of them
//! depends on this crate or names actix.

pub mod auth;
pub mod commands;
pub mod config;
pub mod dicom_source;
pub mod dicom_upload;
pub mod error;
pub mod jobs;
pub mod leftovers;
pub mod logging;
pub mod multipart;
pub mod openapi;
pub mod pacs;
pub mod pickup;
pub mod response;
pub mod routes;
pub mod serve;
pub mod state;
pub mod zip_export;

pub use app::create_app;

mod app;
