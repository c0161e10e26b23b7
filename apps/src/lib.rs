//! `ferrolabel-apps`: the app definitions served by the ferrolabel server and the glue between
//! the protocol's task requests and the engine.
//!
//! An app is a set of models (infer tasks), trainers, active-learning strategies and scoring
//! methods, described to clients by `GET /info/`. Today there is one app, [`WholeBodyApp`], which
//! serves MONAI's `wholeBody_ct_segmentation` bundle through the libtorch
//! [`Engine`](ferrolabel_models::Engine).
//!
//! This crate knows nothing about HTTP: the server crate turns requests into calls here and maps
//! [`AppError`] variants to status codes. Heavy work (image decoding, label encoding) runs on
//! tokio's blocking pool, and the network runs on the engine thread, so callers on an async
//! runtime are never blocked.

pub mod batch;
pub mod epistemic;
mod error;
pub mod infer;
pub mod jobs;
pub mod report;
pub mod scoring;
pub mod scribbles;
pub mod strategy;
pub mod train;
pub mod validate;
pub mod versions;
pub mod wholebody;

pub use error::{AppError, Result};
pub use infer::{InferOutput, InferPlan, ResultExt};
pub use strategy::{Candidate, Strategy};
pub use wholebody::{AppOptions, WholeBodyApp, MODEL_NAME};
