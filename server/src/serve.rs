//! The server assembled from [`ServerArgs`], shared by `ferrolabel start_server` and the
//! in-process tests: [`plan`] checks the arguments (settings, authentication, TLS), [`Plan::build`]
//! opens the app, the datastore, the session store, the PACS and the job scheduler, and
//! [`Built::bind`] listens; [`Serving::run`] serves until the server is stopped, then hands the
//! running jobs back and closes the datastore.
//!
//! What is global to a process stays with the caller: the tracing subscriber
//! ([`crate::logging`]) and the training worker's executable ([`Plan::build`] takes it; the
//! binary passes itself, a test passes `CARGO_BIN_EXE_ferrolabel`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, HttpServer};
use anyhow::{Context, Result};
use ferrolabel_apps::jobs::{PeriodicFn, Scheduler, SchedulerOptions};
use ferrolabel_apps::{AppOptions, WholeBodyApp};
use ferrolabel_datastore::{Datastore, DatastoreOptions, Sessions};
use ferrolabel_imaging::Limits;
use ferrolabel_models::EngineOptions;
use serde_json::json;

use crate::auth::{Auth, AuthOptions};
use crate::config::{ServerArgs, Settings};
use crate::state::AppState;

/// Parses the arguments of `start_server` (without the program and subcommand names), the way
/// the command line does (environment variables included).
pub fn parse_args<I, T>(args: I) -> Result<ServerArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    #[derive(clap::Parser)]
    struct StartServer {
        #[command(flatten)]
        args: ServerArgs,
    }
    let argv =
        std::iter::once(OsString::from("start_server")).chain(args.into_iter().map(Into::into));
    <StartServer as clap::Parser>::try_parse_from(argv).map(|p| p.args)
}

/// How often expired sessions are removed.
const SESSION_SWEEP: Duration = Duration::from_secs(300);

/// Display names of the device, as `/info/` lists them (`cpu`, else the GPU's name).
fn device_names(device: ferrolabel_models::Device) -> Vec<String> {
    let Some(n) = ferrolabel_models::device::cuda_index(device) else {
        return vec!["cpu".to_string()];
    };
    let names = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    match names.get(n) {
        Some(name) if !name.is_empty() => vec![name.clone()],
        _ => vec![format!("cuda:{n}")],
    }
}

/// The authentication of `args` (`None` when off), and the TLS configuration (`None`: plain
/// HTTP). Checked before anything else is opened, so a bad users file or key stops the start.
fn auth_and_tls(args: &ServerArgs) -> Result<(Option<Arc<Auth>>, Option<rustls::ServerConfig>)> {
    let auth = if args.auth_enable {
        let Some(users_file) = args.auth_users.clone() else {
            anyhow::bail!(
                "--auth-enable needs --auth-users FILE (make one with `ferrolabel auth add-user`)"
            );
        };
        if args.auth_token_expiry == 0 {
            anyhow::bail!("--auth-token-expiry must be at least 1 second");
        }
        let auth = Auth::load(&AuthOptions {
            users_file,
            token_ttl: Duration::from_secs(args.auth_token_expiry),
            client_id: args.auth_client_id.clone(),
        })?;
        Some(Arc::new(auth))
    } else {
        None
    };
    let tls = match (&args.ssl_certfile, &args.ssl_keyfile) {
        (Some(cert), Some(key)) => Some(crate::auth::tls::server_config(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("--ssl-certfile and --ssl-keyfile go together"),
    };
    Ok((auth, tls))
}

/// With `--studies http(s)://.../dicom-web`: opens the PACS datastore, lists the PACS's series
/// once before serving (a PACS that is down is logged; the last listing stays) and retries
/// unsent SEGs; the scheduler's periodic `pacs_sync` job does both every sync interval.
async fn open_pacs(
    settings: &Settings,
    datastore: &Datastore,
    app: &WholeBodyApp,
) -> Result<Option<Arc<crate::pacs::Pacs>>> {
    let (Some(config), Some(local)) = (&settings.dicomweb, &settings.pacs) else {
        return Ok(None);
    };
    let structures = app
        .label_map()
        .iter()
        .filter_map(|(name, v)| {
            let value = u8::try_from(v.as_i64()?).ok().filter(|v| *v > 0)?;
            Some(ferrolabel_dicom::seg::Structure {
                value,
                name: name.clone(),
            })
        })
        .collect();
    let pacs = crate::pacs::Pacs::open(
        config.clone(),
        &local.series_cache,
        local.cache_bytes,
        datastore.clone(),
        *app.limits(),
        structures,
    )
    .with_context(|| format!("cannot open the DICOMweb datastore {}", config.base_url))?;
    tracing::info!(
        pacs = %config.base_url,
        local = %settings.studies.display(),
        series_cache = %local.series_cache.display(),
        cache_mb = local.cache_bytes >> 20,
        sync_interval_s = local.sync_interval,
        "DICOMweb datastore"
    );
    crate::pacs::sync_once(&pacs).await;
    Ok(Some(pacs))
}

/// The periodic jobs of this server: the session and token sweeps, and the PACS sync.
fn periodic_jobs(
    settings: &Settings,
    sessions: Option<Sessions>,
    auth: Option<Arc<Auth>>,
    pacs: Option<Arc<crate::pacs::Pacs>>,
) -> Vec<(String, Duration, PeriodicFn)> {
    let mut jobs: Vec<(String, Duration, PeriodicFn)> = Vec::new();
    if let Some(s) = sessions {
        let f: PeriodicFn = Arc::new(move || {
            let s = s.clone();
            Box::pin(async move {
                let n = s.remove_expired().await?;
                if n > 0 {
                    tracing::info!(removed = n, "expired sessions removed");
                }
                Ok(json!({ "removed": n }))
            })
        });
        jobs.push(("session_sweep".into(), SESSION_SWEEP, f));
    }
    if let Some(a) = auth {
        let f: PeriodicFn = Arc::new(move || {
            let a = a.clone();
            Box::pin(async move { Ok(json!({ "removed": a.sweep().await? })) })
        });
        jobs.push(("token_sweep".into(), SESSION_SWEEP, f));
    }
    if let (Some(p), Some(local)) = (pacs, &settings.pacs) {
        let f: PeriodicFn = Arc::new(move || {
            let p = p.clone();
            Box::pin(async move { Ok(crate::pacs::sync_once(&p).await) })
        });
        jobs.push((
            "pacs_sync".into(),
            Duration::from_secs(local.sync_interval),
            f,
        ));
    }
    jobs
}

/// Checked arguments of a server: nothing is opened yet.
pub struct Plan {
    args: ServerArgs,
    settings: Settings,
    auth: Option<Arc<Auth>>,
    tls: Option<rustls::ServerConfig>,
}

/// Derives the settings of `args` and loads the users file and TLS key: a bad configuration
/// stops the start here, before anything is opened.
pub fn plan(args: ServerArgs) -> Result<Plan> {
    let settings = args.settings()?;
    let (auth, tls) = auth_and_tls(&args)?;
    Ok(Plan {
        args,
        settings,
        auth,
        tls,
    })
}

impl Plan {
    /// The server's log file (`<studies>/.ferrolabel/logs/app.log`, served by `/logs/`).
    pub fn log_file(&self) -> &Path {
        &self.settings.log_file
    }

    /// Opens the app (engine, trainer), the datastore, the PACS, the session store and the job
    /// scheduler. `worker_exe` is the executable whose `dev train-worker` runs trainings
    /// (`None`: training is unavailable). Needs an actix system (`actix_web::rt::System`).
    pub async fn build(self, worker_exe: Option<PathBuf>) -> Result<Built> {
        let Plan {
            args,
            settings,
            auth,
            tls,
        } = self;
        let (app, datastore) = open_core(&args, &settings, worker_exe).await?;
        if let Some(a) = &auth {
            a.attach(datastore.clone());
        }
        let pacs = open_pacs(&settings, &datastore, &app).await?;
        let sessions = match &settings.session_path {
            Some(p) => Some(
                Sessions::open(p, settings.session_expiry)
                    .await
                    .with_context(|| format!("cannot open the session folder {}", p.display()))?
                    // with --storage-url, sessions are shared by every server (docs/team.md)
                    .shared_through(&datastore),
            ),
            None => None,
        };
        let app = Arc::new(app);
        let periodic = periodic_jobs(&settings, sessions.clone(), auth.clone(), pacs.clone());
        let jobs = Scheduler::start(
            app.clone(),
            datastore.clone(),
            scheduler_options(&args, !args.no_jobs),
            periodic,
        )
        .await
        .context("cannot start the job scheduler")?;
        let state = web::Data::new(AppState {
            jobs,
            app,
            datastore,
            sessions,
            settings: Arc::new(settings),
            pacs,
        });
        if let Some(a) = &auth {
            tracing::info!(
                users = a.user_count(),
                token_ttl_s = a.token_ttl().as_secs(),
                "authentication on"
            );
        }
        let workers = args
            .workers
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            })
            .max(2);
        Ok(Built {
            signals: true,
            host: args.host,
            port: args.port,
            workers,
            state,
            auth,
            tls,
        })
    }
}

/// What every process of a deployment opens, a server or a worker: the app (bundle, engine
/// thread, trainer; `worker_exe` runs the trainings) and the datastore (`--datastore-url`, else
/// SQLite in the studies folder; `--storage-url`: files' content in object storage).
pub(crate) async fn open_core(
    args: &ServerArgs,
    settings: &Settings,
    worker_exe: Option<PathBuf>,
) -> Result<(WholeBodyApp, Datastore)> {
    let app = open_app(args, settings)?;
    let url = args.datastore_url.clone().filter(|u| !u.trim().is_empty());
    let datastore = Datastore::open(
        &settings.studies,
        DatastoreOptions {
            url,
            extensions: settings.extensions.clone(),
            storage: storage_options(args),
            ..DatastoreOptions::default()
        },
    )
    .await
    .with_context(|| format!("cannot open the datastore {}", settings.studies.display()))?;
    // with object storage: the versions' files as blobs, this process's weights in line with
    // the deployment's active versions (fetched from the bucket when missing here)
    ferrolabel_apps::versions::share(&app, &datastore).await;
    match worker_exe {
        Some(exe) => app.trainer().set_worker_exe(exe),
        None => tracing::warn!("training is unavailable: no worker executable"),
    }
    Ok((app, datastore))
}

/// The object storage of `--storage-url` (connection settings from the `AWS_*` environment),
/// if set.
fn storage_options(args: &ServerArgs) -> Option<ferrolabel_datastore::StorageOptions> {
    let url = args
        .storage_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())?;
    Some(ferrolabel_datastore::StorageOptions {
        url: url.to_string(),
        cache_dir: args.storage_cache.clone(),
        settings: Vec::new(),
    })
}

/// The scheduler settings of `args`; `run_submitted`: whether this process runs submitted jobs.
pub(crate) fn scheduler_options(args: &ServerArgs, run_submitted: bool) -> SchedulerOptions {
    SchedulerOptions {
        lease: Duration::from_secs(args.job_lease.max(1)),
        run_submitted,
        ..SchedulerOptions::default()
    }
}

/// Whether `--conf preload` is on (the default): weights are loaded before the first request,
/// and reloaded as soon as a new checkpoint appears ([`crate::pickup`]).
pub(crate) fn preload_on(settings: &Settings) -> bool {
    settings
        .conf
        .get("preload")
        .map(|v| crate::config::parse_bool(v).unwrap_or(true))
        .unwrap_or(true)
}

/// Opens the app of `args`: the bundle, the engine thread and the trainer; removes checkpoint
/// temp files left by a killed write and warns about missing weights.
fn open_app(args: &ServerArgs, settings: &Settings) -> Result<WholeBodyApp> {
    let device = ferrolabel_models::parse_device(&args.device)?;
    let limits = Limits {
        max_voxels: args.max_voxels.unwrap_or(Limits::DEFAULT_MAX_VOXELS),
        max_decompressed_bytes: args.max_decompressed_mb.saturating_mul(1 << 20),
        max_extension_bytes: args.max_extension_kb.saturating_mul(1 << 10),
        max_gzip_ratio: args.max_gzip_ratio.max(1),
    };
    let app = WholeBodyApp::open(AppOptions {
        app_dir: args.app.clone(),
        conf: settings.conf.clone(),
        engine: EngineOptions {
            device,
            threads: args.threads,
            amp: device.is_cuda(),
            precision: args.precision,
            queue_limit: args.infer_queue.max(1),
        },
        device_names: device_names(device),
        limits,
        strategies_enabled: args.tasks_strategy,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
    })?;
    // a checkpoint write killed before its rename leaves a temp file next to the weights
    crate::leftovers::remove_stale_checkpoint_temps(&app.bundle_dir().join("models"));
    for res in [
        ferrolabel_models::Resolution::High,
        ferrolabel_models::Resolution::Low,
    ] {
        if let Err(e) = app.check_weights(res) {
            tracing::warn!("{e}");
        }
    }
    Ok(app)
}

/// A server whose parts are open, not yet listening.
pub struct Built {
    signals: bool,
    host: String,
    port: u16,
    workers: usize,
    state: web::Data<AppState>,
    auth: Option<Arc<Auth>>,
    tls: Option<rustls::ServerConfig>,
}

impl Built {
    /// The shared state the handlers see.
    pub fn state(&self) -> &web::Data<AppState> {
        &self.state
    }

    /// Leaves SIGINT and SIGTERM alone (a server inside a test process): only
    /// [`Serving::handle`] stops it.
    pub fn without_signals(mut self) -> Built {
        self.signals = false;
        self
    }

    /// Listens on `--host`:`--port` (port 0: a free one, see [`Serving::addrs`]), logs the
    /// addresses and starts preloading the weights (unless `--conf preload false`).
    pub fn bind(self) -> Result<Serving> {
        let Built {
            signals,
            host,
            port,
            workers,
            state,
            auth,
            tls,
        } = self;
        let app_state = state.clone();
        // TCP_NODELAY: with Nagle's algorithm a TLS response (written as several records) waited
        // for the client's delayed ACK, ~40 ms on most HTTPS requests
        let server = HttpServer::new(move || crate::create_app(app_state.clone(), auth.clone()))
            .workers(workers)
            .tcp_nodelay(true);
        let server = if signals {
            server
        } else {
            server.disable_signals()
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = match tls {
            Some(tls) => server.bind_rustls_0_23((host.as_str(), port), tls),
            None => server.bind((host.as_str(), port)),
        }
        .with_context(|| format!("cannot bind {host}:{port}"))?;
        let addrs = server.addrs();
        for addr in &addrs {
            tracing::info!(
                studies = %state.settings.studies.display(),
                bundle = %state.app.bundle_dir().display(),
                "ferrolabel {} listening on {scheme}://{addr}",
                env!("CARGO_PKG_VERSION")
            );
        }
        let preload = preload_on(&state.settings);
        if preload {
            let app = state.app.clone();
            actix_web::rt::spawn(async move {
                match app.preload().await {
                    Ok(()) => tracing::info!("weights preloaded"),
                    Err(e) => tracing::warn!("weights not preloaded: {e}"),
                }
            });
        }
        let shared = state
            .datastore
            .storage_url()
            .map(|_| state.datastore.clone());
        let pickup = crate::pickup::spawn(state.app.clone(), crate::pickup::POLL, preload, shared);
        Ok(Serving {
            server: server.run(),
            addrs,
            state,
            pickup,
        })
    }
}

/// A listening server; [`Serving::run`] drives it.
pub struct Serving {
    server: actix_web::dev::Server,
    addrs: Vec<SocketAddr>,
    state: web::Data<AppState>,
    pickup: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// The bound addresses (the real port when `--port 0`).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A handle that stops the server ([`ServerHandle::stop`]); Ctrl-C and SIGTERM stop it too.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped; then hands the running jobs back (a training worker must not
    /// outlive the server that watches it; the next start continues them), stops the engine
    /// thread and closes the datastore.
    pub async fn run(self) -> Result<()> {
        let served = self.server.await.context("server failed");
        self.pickup.abort();
        let state = self.state;
        state.jobs.shutdown().await;
        state.app.engine().shutdown();
        state.datastore.close().await;
        tracing::info!("server stopped");
        served
    }
}
