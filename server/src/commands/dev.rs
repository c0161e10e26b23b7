//! `ferrolabel dev make-weights`: random weights for a bundle, from a seed. They make the
//! server and the demos run end to end; the segmentations they produce are noise, not a model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrolabel_models::network::weights;
use ferrolabel_models::{Bundle, Resolution};

/// Developer subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DevCommand {
    /// Write seeded random weights to <bundle>/models/model.pt and model_lowres.pt (for demos
    /// and tests; NOT a trained model).
    MakeWeights(MakeWeightsArgs),
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
    }
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
