//! `ferrolabel`: a MONAI Label compatible server for whole-body CT segmentation.
//!
//! Owns the HTTP protocol, the CLI and configuration. Library crates never name actix.
//!
//! Subcommands:
//! * `start_server` — the MONAI Label REST server ([`commands::start_server`]);
//! * `infer` — one-shot segmentation of a file ([`commands::infer`]);
//! * `auth add-user` / `auth hash-password` — the users file of the auth mode ([`commands::auth`]);
//! * `dev make-weights` (hidden) — random, seeded weights for demos and tests (not a model).

mod auth;
mod commands;
mod config;
mod dicom_source;
mod dicom_upload;
mod error;
mod form;
mod leftovers;
mod logging;
mod multipart;
mod pacs;
mod pyjson;
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
    /// Users of the auth mode: add a user to a users file, hash a password.
    Auth {
        #[command(subcommand)]
        command: commands::auth::AuthCommand,
    },
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
        Command::Auth { command } => {
            logging::init_stderr("warn");
            commands::auth::run(command)
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
