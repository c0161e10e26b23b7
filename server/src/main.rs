//! `ferrolabel`: a MONAI Label compatible server for whole-body CT segmentation.
//!
//! Owns the HTTP protocol, the CLI and configuration. Library crates never name actix.

mod commands;

use clap::{Parser, Subcommand};

/// ferrolabel: MONAI Label protocol server and one-shot segmentation CLI.
#[derive(Debug, Parser)]
#[command(name = "ferrolabel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Segment one image with a MONAI bundle and write the label map.
    Infer(commands::infer::InferArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Infer(args) => commands::infer::run(args),
    };
    if let Err(e) = result {
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            msg.push_str(&format!(": {cause}"));
        }
        eprintln!("ferrolabel: {msg}");
        std::process::exit(1);
    }
}
