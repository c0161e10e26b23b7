//! `ferrolabel start_server`: opens the app, the datastore and the session store, and serves the
//! MONAI Label REST API with actix-web.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpServer};
use anyhow::{Context, Result};
use ferrolabel_apps::jobs::{PeriodicFn, Scheduler, SchedulerOptions};
use ferrolabel_apps::{AppOptions, WholeBodyApp};
use ferrolabel_datastore::{Datastore, DatastoreOptions, Sessions};
use ferrolabel_imaging::Limits;
use ferrolabel_models::EngineOptions;
use serde_json::json;

use crate::auth::{Auth, AuthOptions};
use crate::config::ServerArgs;
use crate::state::AppState;

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
    settings: &crate::config::Settings,
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
    settings: &crate::config::Settings,
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
            Box::pin(async move { Ok(json!({ "removed": a.sweep() })) })
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

/// Runs the server until it is stopped (Ctrl-C / SIGTERM).
pub fn run(args: ServerArgs) -> Result<()> {
    let settings = args.settings()?;
    let (auth, tls) = auth_and_tls(&args)?;
    crate::logging::init_with_file("info", &settings.log_file)
        .with_context(|| format!("cannot open the log file {}", settings.log_file.display()))?;
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
    let workers = args
        .workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(2);
    actix_web::rt::System::new().block_on(serve(args, settings, app, workers, auth, tls))
}

async fn serve(
    args: ServerArgs,
    settings: crate::config::Settings,
    app: WholeBodyApp,
    workers: usize,
    auth: Option<Arc<Auth>>,
    tls: Option<rustls::ServerConfig>,
) -> Result<()> {
    let datastore = Datastore::open(
        &settings.studies,
        DatastoreOptions {
            extensions: settings.extensions.clone(),
            ..DatastoreOptions::default()
        },
    )
    .await
    .with_context(|| format!("cannot open the datastore {}", settings.studies.display()))?;
    let pacs = open_pacs(&settings, &datastore, &app).await?;
    let sessions = match &settings.session_path {
        Some(p) => Some(
            Sessions::open(p, settings.session_expiry)
                .await
                .with_context(|| format!("cannot open the session folder {}", p.display()))?,
        ),
        None => None,
    };
    match std::env::current_exe() {
        Ok(exe) => app.trainer().set_worker_exe(exe),
        Err(e) => {
            tracing::warn!(error = %e, "training is unavailable: cannot locate this executable")
        }
    }
    let app = Arc::new(app);
    let periodic = periodic_jobs(&settings, sessions.clone(), auth.clone(), pacs.clone());
    let jobs = Scheduler::start(
        app.clone(),
        datastore.clone(),
        SchedulerOptions {
            lease: Duration::from_secs(args.job_lease.max(1)),
            ..SchedulerOptions::default()
        },
        periodic,
    )
    .await
    .context("cannot start the job scheduler")?;
    let state = web::Data::new(AppState {
        jobs: jobs.clone(),
        app: app.clone(),
        datastore: datastore.clone(),
        sessions,
        settings: Arc::new(settings.clone()),
        pacs,
    });
    if let Some(a) = auth.clone() {
        tracing::info!(
            users = a.user_count(),
            token_ttl_s = a.token_ttl().as_secs(),
            "authentication on"
        );
    }
    let server =
        HttpServer::new(move || crate::create_app(state.clone(), auth.clone())).workers(workers);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = match tls {
        Some(tls) => server.bind_rustls_0_23((args.host.as_str(), args.port), tls),
        None => server.bind((args.host.as_str(), args.port)),
    }
    .with_context(|| format!("cannot bind {}:{}", args.host, args.port))?;
    for addr in server.addrs() {
        tracing::info!(
            studies = %settings.studies.display(),
            bundle = %app.bundle_dir().display(),
            "ferrolabel {} listening on {scheme}://{addr}",
            env!("CARGO_PKG_VERSION")
        );
    }
    let preload = settings
        .conf
        .get("preload")
        .map(|v| crate::config::parse_bool(v).unwrap_or(true))
        .unwrap_or(true);
    if preload {
        let app = app.clone();
        actix_web::rt::spawn(async move {
            match app.preload().await {
                Ok(()) => tracing::info!("weights preloaded"),
                Err(e) => tracing::warn!("weights not preloaded: {e}"),
            }
        });
    }
    server.run().await.context("server failed")?;
    // running jobs are handed back (a training worker must not outlive the server that watches
    // it); the next start continues them
    jobs.shutdown().await;
    datastore.close().await;
    tracing::info!("server stopped");
    Ok(())
}
