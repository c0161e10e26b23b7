//! What a training run tells its observer: progress events, the per-epoch record, the
//! outcome, and the observer itself (which can ask the run to stop).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One line of progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    /// The run has begun.
    Started {
        /// Training pairs.
        train: usize,
        /// Validation pairs (0: the training pairs are evaluated).
        val: usize,
        /// Optimiser steps per epoch.
        iterations_per_epoch: usize,
        /// Trainable parameters.
        parameters: i64,
    },
    /// One optimiser step.
    Iteration {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        iteration: usize,
        /// Mean loss of the step's crops.
        loss: f64,
        /// Seconds the step took.
        seconds: f64,
    },
    /// The run continues exactly from a resume state.
    Resumed {
        /// The last finished epoch.
        epoch: usize,
        /// Optimiser steps already done in the next epoch.
        step: usize,
        /// Optimiser steps of the run so far.
        iteration: u64,
        /// Settings that differ from the stopped run's ([`super::state::fingerprint`]): when any
        /// do, the run continues, but not as the stopped run would have.
        changed: Vec<String>,
    },
    /// An epoch ended.
    Epoch(EpochRecord),
    /// A better checkpoint was written.
    Checkpoint {
        /// Epoch of the checkpoint.
        epoch: usize,
        /// Its metric.
        metric: f64,
        /// The file.
        path: PathBuf,
    },
}

/// The record of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Mean Dice without background, when validated this epoch.
    pub val_dice: Option<f64>,
    /// Best metric so far.
    pub best_metric: Option<f64>,
    /// Epoch of the best metric.
    pub best_epoch: Option<usize>,
    /// Seconds for the epoch (training and validation).
    pub seconds: f64,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Epochs completed.
    pub epochs: usize,
    /// Whether a stop request ended it early.
    pub stopped: bool,
    /// Best metric reached (and written as the checkpoint).
    pub best_metric: Option<f64>,
    /// Epoch of the best metric.
    pub best_epoch: Option<usize>,
    /// Whether the metric is a validation Dice (`false`: evaluated on the training pairs).
    pub validated_on_holdout: bool,
}

/// Receives the progress of a run and tells it when to stop.
pub trait TrainObserver {
    /// Called for every event.
    fn event(&mut self, event: &TrainEvent);
    /// Polled between samples and between validation windows; `true` ends the run there.
    fn stop_requested(&self) -> bool;
}
