//! `ferrolabel`: a MONAI Label compatible server for whole-body CT segmentation.
//!
//! Owns the HTTP protocol, the CLI and configuration. Library crates never name actix.
//!
//! Subcommands:
//! * `start_server` — the MONAI Label REST server ([`ferrolabel::commands::start_server`]);
//! * `worker` — runs the jobs of the servers on a shared database, no HTTP ([`ferrolabel::commands::worker`]);
//! * `infer` — one-shot segmentation of a file ([`ferrolabel::commands::infer`]);
//! * `auth add-user` / `auth hash-password` — the users file of the auth mode ([`ferrolabel::commands::auth`]);
//! * `storage gc` — deletes object-storage blobs no row names ([`ferrolabel::commands::storage`]);
//! * `dev make-weights` (hidden) — random, seeded weights for demos and tests (not a model).

use clap::{Parser, Subcommand};
// jemalloc serves every allocation of the process, libtorch's tensors included: its unprefixed
// `malloc`/`posix_memalign`/`free` replace glibc's for every library, and Rust's allocator calls
// them too. glibc maps each allocation over 32 MiB afresh and unmaps it when freed, so every
// window's activations cost a page fault per 4 KiB (29% of a bf16 inference's time); jemalloc
// reuses those pages (`oversize_threshold:0`, set in `.cargo/config.toml`) and returns idle ones
// from a background thread. See docs/benchmarks.md, "Allocator". It is deliberately not also
// Rust's `#[global_allocator]` (tikv-jemallocator): with that, a JPEG 2000 DICOM upload aborted
// the server ("memory allocation of 8 bytes failed", server/tests/process/objects.rs). That
// allocator frees with the size Rust states (`sdallocx`), so memory handed between C-style
// `malloc`/`free` code (the JPEG 2000 decoder's) and Rust collections at another size corrupts
// jemalloc's heap; through `malloc`/`free` sizes are never stated.
use tikv_jemalloc_sys as _;

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
    StartServer(Box<ferrolabel::config::ServerArgs>),
    /// Run background jobs (batch inference, scoring, training) for the servers on the same
    /// database and studies folder, with no HTTP (one per GPU: --device cuda:N).
    Worker(Box<ferrolabel::commands::worker::WorkerArgs>),
    /// Segment one image with a MONAI bundle and write the label map.
    Infer(ferrolabel::commands::infer::InferArgs),
    /// Users of the auth mode: add a user to a users file, hash a password.
    Auth {
        #[command(subcommand)]
        command: ferrolabel::commands::auth::AuthCommand,
    },
    /// Object storage (--storage-url): `storage gc` deletes the blobs no row names.
    Storage {
        #[command(subcommand)]
        command: ferrolabel::commands::storage::StorageCommand,
    },
    /// Developer tools.
    #[command(hide = true)]
    Dev {
        #[command(subcommand)]
        command: ferrolabel::commands::dev::DevCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::StartServer(args) => ferrolabel::commands::start_server::run(*args),
        Command::Worker(args) => ferrolabel::commands::worker::run(*args),
        Command::Infer(args) => {
            ferrolabel::logging::init_stderr("warn");
            ferrolabel::commands::infer::run(args)
        }
        Command::Auth { command } => {
            ferrolabel::logging::init_stderr("warn");
            ferrolabel::commands::auth::run(command)
        }
        Command::Storage { command } => {
            ferrolabel::logging::init_stderr("warn");
            ferrolabel::commands::storage::run(command)
        }
        Command::Dev { command } => {
            ferrolabel::logging::init_stderr("warn");
            ferrolabel::commands::dev::run(command)
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
