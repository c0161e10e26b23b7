//! The CLI's subcommands.

pub mod dev;
pub mod infer;
pub mod start_server;
