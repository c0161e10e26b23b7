//! `ferrolabel start_server`: checks the arguments, starts the log, and serves the MONAI Label
//! REST API with actix-web until Ctrl-C / SIGTERM (the assembly is [`crate::serve`]).

use anyhow::{Context, Result};

use crate::config::ServerArgs;

/// Runs the server until it is stopped (Ctrl-C / SIGTERM).
pub fn run(args: ServerArgs) -> Result<()> {
    let plan = crate::serve::plan(args)?;
    crate::logging::init_with_file("info", plan.log_file())
        .with_context(|| format!("cannot open the log file {}", plan.log_file().display()))?;
    let worker_exe = match std::env::current_exe() {
        Ok(exe) => Some(exe),
        Err(e) => {
            tracing::warn!(error = %e, "training is unavailable: cannot locate this executable");
            None
        }
    };
    actix_web::rt::System::new()
        .block_on(async move { plan.build(worker_exe).await?.bind()?.run().await })
}
