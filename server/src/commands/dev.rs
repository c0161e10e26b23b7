//! `ferrolabel dev make-weights`: random weights for a bundle, from a seed. They make the
//! server and the demos run end to end; the segmentations they produce are noise, not a model.
//!
//! `ferrolabel dev write-checkpoints`: writes a checkpoint over and over through the writer a
//! training run uses, for the crash-safety test that kills it mid-write.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrolabel_models::network::weights;
use ferrolabel_models::{Bundle, Resolution};
use sha2::{Digest, Sha256};

/// Developer subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DevCommand {
    /// Write seeded random weights to <bundle>/models/model.pt and model_lowres.pt (for demos
    /// and tests; NOT a trained model).
    MakeWeights(MakeWeightsArgs),
    /// Write a checkpoint of the bundle's network to --out again and again (each one
    /// different), printing `saved <n> <sha256>` after each; for crash-safety tests.
    #[command(hide = true)]
    WriteCheckpoints(WriteCheckpointsArgs),
    /// Run one training job (started by the server's `POST /train/`; prints JSON events).
    #[command(hide = true)]
    TrainWorker {
        /// The job file (`-`: read it from standard input, as the server does).
        request: PathBuf,
    },
}

/// Arguments of `ferrolabel dev write-checkpoints`.
#[derive(Debug, clap::Args)]
pub struct WriteCheckpointsArgs {
    /// Bundle folder (configs/inference.json gives the network shape).
    #[arg(long)]
    pub bundle: PathBuf,
    /// The checkpoint file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// How many checkpoints to write (default: until killed).
    #[arg(long)]
    pub count: Option<u64>,
}

/// Arguments of `ferrolabel dev make-weights`.
#[derive(Debug, clap::Args)]
pub struct MakeWeightsArgs {
    /// Bundle folder (configs/inference.json gives the network shape).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Random seed (the low-resolution file uses seed + 1).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Which files: both, high (model.pt) or low (model_lowres.pt).
    #[arg(long, default_value = "both", value_parser = ["both", "high", "low"])]
    pub resolution: String,
}

/// Runs a developer subcommand.
pub fn run(cmd: DevCommand) -> Result<()> {
    match cmd {
        DevCommand::MakeWeights(args) => make_weights(&args),
        DevCommand::WriteCheckpoints(args) => write_checkpoints(&args),
        DevCommand::TrainWorker { request } => {
            ferrolabel_apps::train::run_worker(&request).map_err(anyhow::Error::from)
        }
    }
}

fn write_checkpoints(args: &WriteCheckpointsArgs) -> Result<()> {
    let bundle =
        Bundle::open(&args.bundle).with_context(|| format!("bundle {}", args.bundle.display()))?;
    if let Some(dir) = args.out.parent() {
        crate::leftovers::remove_stale_checkpoint_temps(dir);
    }
    let mut stdout = std::io::stdout().lock();
    let mut n = 0u64;
    while args.count.is_none_or(|c| n < c) {
        weights::write_random(&bundle.network, n as i64, &args.out)
            .with_context(|| format!("writing {}", args.out.display()))?;
        let bytes = std::fs::read(&args.out)?;
        writeln!(stdout, "saved {n} {}", hex::encode(Sha256::digest(&bytes)))?;
        stdout.flush()?;
        n += 1;
    }
    Ok(())
}

fn make_weights(args: &MakeWeightsArgs) -> Result<()> {
    let bundle =
        Bundle::open(&args.bundle).with_context(|| format!("bundle {}", args.bundle.display()))?;
    let wanted: Vec<(Resolution, i64)> = match args.resolution.as_str() {
        "high" => vec![(Resolution::High, 0)],
        "low" => vec![(Resolution::Low, 1)],
        _ => vec![(Resolution::High, 0), (Resolution::Low, 1)],
    };
    for (res, offset) in wanted {
        let path = args.bundle.join("models").join(res.model_file());
        weights::write_random(&bundle.network, args.seed + offset, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
