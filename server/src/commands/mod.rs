//! The CLI's subcommands.

pub mod infer;
