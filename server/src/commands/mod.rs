//! The CLI's subcommands.

pub mod auth;
pub mod dev;
pub mod infer;
pub mod start_server;
pub mod storage;
pub mod worker;
