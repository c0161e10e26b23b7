//! `ferrolabel storage gc`: garbage collection of the object storage's blobs
//! (`--storage-url`, docs/team.md#object-storage).
//!
//! Deletes the blobs that no row of the database names any more (the image of a removed image,
//! the file of a model version pruned by the retention policy, an upload whose save failed
//! after its blob was put) once they are older than a grace period, and prints what it found
//! as JSON ([`ferrolabel_datastore::BlobGc`]). It opens the datastore as a server does (same
//! `--studies`, `--datastore-url`, `--storage-url` and `AWS_*` environment), so give it the
//! studies folder of one of the servers: the open scans that folder. It deletes in batches, each
//! under the collection lock against saves that may name a blob in flight
//! (`datastore/src/objects_gc.rs`; the files of live sessions and DICOM sources are names too),
//! so it may run while the servers work.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ferrolabel_datastore::{Datastore, DatastoreOptions, StorageOptions};

/// `ferrolabel storage ...`.
#[derive(Debug, clap::Subcommand)]
pub enum StorageCommand {
    /// Delete the blobs no row names that are older than the grace period.
    Gc(GcArgs),
}

/// Arguments of `ferrolabel storage gc`.
#[derive(Debug, Clone, clap::Args)]
pub struct GcArgs {
    /// The studies folder of one of the servers (opened as the server opens it).
    #[arg(long, env = "MONAI_LABEL_STUDIES")]
    pub studies: PathBuf,
    /// The servers' database: `postgres://...` or `sqlite://PATH`; default: SQLite in the
    /// studies folder.
    #[arg(long, env = "FERROLABEL_DATASTORE_URL", hide_env_values = true)]
    pub datastore_url: Option<String>,
    /// The servers' object storage, `s3://BUCKET[/PREFIX]` (endpoint and credentials from the
    /// `AWS_*` environment).
    #[arg(long, env = "FERROLABEL_STORAGE_URL")]
    pub storage_url: String,
    /// This process's cache of blobs (default `<studies>/.cache/objects`).
    #[arg(long, env = "FERROLABEL_STORAGE_CACHE")]
    pub storage_cache: Option<PathBuf>,
    /// Only blobs last written longer ago than this are deleted: it must exceed the longest
    /// save (a save puts its blob before it commits the row that names it).
    #[arg(long, default_value_t = 24.0)]
    pub grace_hours: f64,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs a `storage` subcommand; the report goes to stdout as JSON.
pub fn run(command: StorageCommand) -> Result<()> {
    let StorageCommand::Gc(args) = command;
    if !(args.grace_hours.is_finite() && args.grace_hours >= 0.0) {
        anyhow::bail!("--grace-hours must be a number of hours, 0 or more");
    }
    let grace = Duration::from_secs_f64(args.grace_hours * 3600.0);
    let report = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            let url = args.datastore_url.clone().filter(|u| !u.trim().is_empty());
            let ds = Datastore::open(
                &args.studies,
                DatastoreOptions {
                    url,
                    storage: Some(StorageOptions {
                        url: args.storage_url.trim().to_string(),
                        cache_dir: args.storage_cache.clone(),
                        settings: Vec::new(),
                    }),
                    ..DatastoreOptions::default()
                },
            )
            .await
            .with_context(|| format!("cannot open the datastore {}", args.studies.display()))?;
            let report = ds.collect_blob_garbage(grace, args.dry_run).await;
            ds.close().await;
            anyhow::Ok(report?)
        })?;
    let mut out = serde_json::to_value(&report)?;
    out["dry_run"] = args.dry_run.into();
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
