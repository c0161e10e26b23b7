//! `ferrolabel`: a MONAI Label compatible server for whole-body CT segmentation.
//!
//! Owns the HTTP protocol, the CLI and configuration. Library crates never name actix.
//!
//! Subcommands:
//! * `start_server` — the MONAI Label REST server ([`commands::start_server`]);
//! * `infer` — one-shot segmentation of a file ([`commands::infer`]);
//! * `dev make-weights` (hidden) — random, seeded weights for demos and tests (not a model).

mod commands;
mod config;
mod error;
mod logging;
mod multipart;
mod response;
mod routes;
mod state;
mod zip_export;

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
    /// Serve the MONAI Label REST API (3D Slicer, the monailabel Python client).
    #[command(name = "start_server", alias = "start-server")]
    StartServer(Box<config::ServerArgs>),
    /// Segment one image with a MONAI bundle and write the label map.
    Infer(commands::infer::InferArgs),
    /// Developer tools.
    #[command(hide = true)]
    Dev {
        #[command(subcommand)]
        command: commands::dev::DevCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::StartServer(args) => commands::start_server::run(*args),
        Command::Infer(args) => {
            logging::init_stderr("warn");
            commands::infer::run(args)
        }
        Command::Dev { command } => {
            logging::init_stderr("warn");
            commands::dev::run(command)
        }
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
