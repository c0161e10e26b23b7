//! The checkpoints a training promotes: sent from its blocking thread ([`Promote`]) and
//! registered as versions by the job's registrar ([`promoter`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use ferrolabel_datastore::Datastore;
use ferrolabel_models::Resolution;
use serde_json::json;

use super::{active_for_infer, register, register_trained, trained_on, Provenance};
use crate::error::Result;
use crate::{WholeBodyApp, MODEL_NAME};

/// A checkpoint a training made active or wants activated, sent from blocking training code.
#[derive(Debug, Clone)]
pub struct Promotion {
    /// The resolution trained.
    pub res: Resolution,
    /// The checkpoint: the active weights file itself (the Rust trainer writes it in place) or
    /// a file elsewhere (copied over it).
    pub path: PathBuf,
    /// The epoch it was saved at.
    pub epoch: usize,
    /// Its validation metric.
    pub metric: f64,
    /// `train` or `torchrun`.
    pub source: &'static str,
}

/// Receives the checkpoints a training promotes; [`crate::train::Trainer::run_promoting`] calls
/// it from its (blocking) thread, so it must not block.
pub trait Promote: Send + Sync {
    /// A checkpoint was promoted.
    fn promoted(&self, p: Promotion);
}

/// Records nothing (a training outside a scheduler: the CLI, unit tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVersions;

impl Promote for NoVersions {
    fn promoted(&self, _: Promotion) {}
}

/// The [`Promote`] of a scheduled training: hands each promotion to [`promoter`]'s registrar.
#[derive(Debug, Clone)]
pub struct Promoter {
    tx: tokio::sync::mpsc::UnboundedSender<Promotion>,
}

impl Promote for Promoter {
    fn promoted(&self, p: Promotion) {
        let _ = self.tx.send(p);
    }
}

/// For the training job `job_id`: records the weights in place as versions first (the parent),
/// captures the training data ([`trained_on`]) and the job's owner, and answers the
/// [`Promoter`] to pass to the training and the registrar future to run beside it, which
/// registers each promoted checkpoint ([`register`] for the Rust trainer's file in place,
/// [`register_trained`] for any other) and ends once every `Promoter` clone is dropped.
pub async fn promoter(
    app: Arc<WholeBodyApp>,
    ds: Datastore,
    job_id: String,
) -> Result<(Promoter, impl Future<Output = ()>)> {
    for res in [Resolution::High, Resolution::Low] {
        active_for_infer(&app, &ds, res).await;
    }
    let data = trained_on(&ds).await?;
    let user = ds.get_job(&job_id).await?.and_then(|j| j.owner);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Promotion>();
    let registrar = async move {
        while let Some(p) = rx.recv().await {
            let prov = Provenance {
                source: p.source.to_string(),
                job_id: Some(job_id.clone()),
                user: user.clone(),
                trained_on: data.clone(),
                metrics: json!({"best_metric": p.metric, "best_epoch": p.epoch}),
            };
            let in_place = app
                .weights_path(MODEL_NAME, p.res)
                .is_ok_and(|a| a == p.path);
            let done = if in_place {
                register(&app, &ds, p.res, &p.path, prov).await
            } else {
                register_trained(&app, &ds, p.res, &p.path, prov).await
            };
            if let Err(e) = done {
                tracing::warn!(job = %job_id, "checkpoint of epoch {} not recorded as a version: {e}", p.epoch);
            }
        }
    };
    Ok((Promoter { tx }, registrar))
}
