//! The tests where the process boundary is the point, in one test binary: `ferrolabel
//! start_server` spawned and SIGKILLed (crash safety, jobs handed over by a restart), training
//! workers that must not outlive their server, the proxy's bounded resident size, and the
//! one-shot `ferrolabel infer` command, distributed training through `torchrun` (no process left
//! after a stop) and through a real single-node Slurm (`slurm`), two servers and workers on
//! PostgreSQL behind haproxy SIGKILLed mid-job (`cluster`), servers on one S3 bucket (`objects`). Route tests run
//! in-process in `tests/http/`.

#[path = "../common/mod.rs"]
mod common;
mod jobs_support;
mod proxy_support;

mod cli_infer;
mod cluster;
mod crash_safety;
mod jobs;
mod objects;
mod proxy;
mod slurm;
mod torchrun;
mod train;
