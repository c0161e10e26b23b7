//! `ferrolabel worker`: a process that only runs background jobs (batch inference, scoring,
//! training) from the jobs table, with no HTTP. One per GPU (`--device cuda:N`) or CPU, on the
//! database (`--datastore-url postgres://...`) and studies folder of the servers; the servers
//! (`start_server --no-jobs`) submit, list and stop the jobs.
//!
//! It opens what a server opens for its jobs (the same code: [`crate::serve::open_core`]): the
//! app with its engine and trainer, and the datastore; then the scheduler's runner claims jobs
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL) until SIGTERM or SIGINT, when the running jobs are
//! handed back to the queue for the next runner. It logs like the server, to stderr and to the
//! studies folder's `app.log` (what `/logs/` serves).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ArgAction;

use crate::config::ServerArgs;

/// Arguments of `ferrolabel worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// App folder (as `start_server --app`; the same bundle folder as the servers').
    #[arg(long, env = "MONAI_LABEL_APP_DIR")]
    pub app: PathBuf,
    /// Studies folder shared with the servers.
    #[arg(long, env = "MONAI_LABEL_STUDIES")]
    pub studies: String,
    /// App setting, repeatable: `--conf bundle_dir /path/to/bundle`.
    #[arg(long, num_args = 2, value_names = ["KEY", "VALUE"], action = ArgAction::Append)]
    pub conf: Vec<String>,
    /// Device the network runs on: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "FERROLABEL_DEVICE")]
    pub device: String,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long, env = "FERROLABEL_THREADS")]
    pub threads: Option<i32>,
    /// The servers' database: `postgres://USER@HOST[:PORT]/DB` or `sqlite://PATH`; default:
    /// SQLite in `<studies>/.ferrolabel/datastore.db` (one machine).
    #[arg(long, env = "FERROLABEL_DATASTORE_URL", hide_env_values = true)]
    pub datastore_url: Option<String>,
    /// The servers' object storage, `s3://BUCKET[/PREFIX]` (as `start_server --storage-url`;
    /// endpoint and credentials from the `AWS_*` environment).
    #[arg(long, env = "FERROLABEL_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// This process's cache of object-storage blobs (default `<studies>/.cache/objects`).
    #[arg(long, env = "FERROLABEL_STORAGE_CACHE")]
    pub storage_cache: Option<PathBuf>,
    /// Job lease, in seconds (as the servers'): a job of a worker that died is taken up again
    /// this long after its last heartbeat.
    #[arg(long, env = "FERROLABEL_JOB_LEASE", default_value_t = 30)]
    pub job_lease: u64,
    /// Jobs run at once (over all kinds; one at a time per kind in the whole deployment).
    #[arg(long, default_value_t = 4)]
    pub max_jobs: usize,
    /// Largest accepted image, in voxels (as the servers').
    #[arg(long, env = "FERROLABEL_MAX_VOXELS")]
    pub max_voxels: Option<u64>,
    /// Image patterns of the datastore scan (as the servers').
    #[arg(long, env = "MONAI_LABEL_DATASTORE_FILE_EXT")]
    pub datastore_file_ext: Option<String>,
}

impl WorkerArgs {
    /// The server arguments these stand for (the settings a worker has no flag for keep
    /// `start_server`'s defaults and environment).
    fn server_args(&self) -> Result<ServerArgs> {
        let app = self.app.as_os_str().to_owned();
        let argv: Vec<std::ffi::OsString> = vec![
            "--app".into(),
            app,
            "--studies".into(),
            self.studies.clone().into(),
        ];
        let mut args = crate::serve::parse_args(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        args.conf = self.conf.clone();
        args.device = self.device.clone();
        args.threads = self.threads;
        args.datastore_url = self.datastore_url.clone();
        args.storage_url = self.storage_url.clone();
        args.storage_cache = self.storage_cache.clone();
        args.job_lease = self.job_lease;
        args.max_voxels = self.max_voxels;
        args.datastore_file_ext = self.datastore_file_ext.clone();
        // no sessions here: the servers sweep them
        args.sessions = false;
        Ok(args)
    }
}

/// Runs the worker until SIGTERM or SIGINT.
pub fn run(args: WorkerArgs) -> Result<()> {
    let max_jobs = args.max_jobs.max(1);
    let server_args = args.server_args()?;
    let settings = server_args.settings()?;
    crate::logging::init_with_file("info", &settings.log_file)
        .with_context(|| format!("cannot open the log file {}", settings.log_file.display()))?;
    let exe = std::env::current_exe().context("cannot locate this executable (for training)")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async move {
            let (app, datastore) =
                crate::serve::open_core(&server_args, &settings, Some(exe)).await?;
            let app = std::sync::Arc::new(app);
            let mut opts = crate::serve::scheduler_options(&server_args, true);
            opts.max_running = max_jobs;
            let jobs = ferrolabel_apps::jobs::Scheduler::start(
                app.clone(),
                datastore.clone(),
                opts,
                Vec::new(),
            )
            .await
            .context("cannot start the job scheduler")?;
            tracing::info!(
                runner = jobs.runner_id(),
                device = %server_args.device,
                studies = %settings.studies.display(),
                bundle = %app.bundle_dir().display(),
                backend = ?datastore.backend(),
                "ferrolabel {} worker running jobs",
                env!("CARGO_PKG_VERSION")
            );
            stopped().await;
            tracing::info!("stopping: handing the running jobs back");
            jobs.shutdown().await;
            app.engine().shutdown();
            datastore.close().await;
            tracing::info!("worker stopped");
            Ok(())
        })
}

/// Waits for SIGTERM or SIGINT.
async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler: only Ctrl-C stops the worker");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
