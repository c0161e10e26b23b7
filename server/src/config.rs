//! `ferrolabel start_server` options: CLI flags, the MONAI Label environment settings that make
//! sense here (docs/protocol.md §14), and the derived [`Settings`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ArgAction;

/// Parses a pydantic-style boolean: true/false, 1/0, yes/no, on/off, t/f, y/n (any case).
pub fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        other => Err(format!("{other:?} is not a boolean")),
    }
}

/// Arguments of `ferrolabel start_server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// App folder (holds model/wholeBody_ct_segmentation unless --conf bundle_dir says otherwise).
    #[arg(long, env = "MONAI_LABEL_APP_DIR")]
    pub app: PathBuf,
    /// Studies folder (the datastore; created if missing), or a DICOMweb service root
    /// `http(s)://HOST[:PORT]/dicom-web` (a PACS datastore: see the `--dicomweb-*` options and
    /// docs/dicomweb.md).
    #[arg(long, env = "MONAI_LABEL_STUDIES")]
    pub studies: String,
    /// App setting, repeatable: `--conf bundle_dir /path/to/bundle`, `--conf skip_strategies true`.
    /// A value may start with `-` (`--conf sbatch_args "--partition gpu"`).
    #[arg(long, num_args = 2, value_names = ["KEY", "VALUE"], action = ArgAction::Append, allow_hyphen_values = true)]
    pub conf: Vec<String>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 = any free port; the chosen one is logged).
    #[arg(long, default_value_t = 8000, env = "MONAI_LABEL_SERVER_PORT")]
    pub port: u16,
    /// Device the network runs on: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "FERROLABEL_DEVICE")]
    pub device: String,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long, env = "FERROLABEL_THREADS")]
    pub threads: Option<i32>,
    /// Network precision of infer requests that name none: fp32 (exact, MONAI's labels) or
    /// bf16 (opt-in, faster; needs a CPU with AVX512-BF16 or AMX, else the server refuses to start).
    #[arg(long, default_value = "fp32", env = "FERROLABEL_PRECISION", value_parser = parse_precision)]
    pub precision: ferrolabel_models::Precision,
    /// Largest accepted upload (image, label, session, weights) in MiB; checked while streaming.
    #[arg(long, default_value_t = 2048, env = "FERROLABEL_MAX_UPLOAD_MB")]
    pub max_upload_mb: u64,
    /// Inference requests that may wait for the engine; more are answered 429.
    #[arg(long, default_value_t = 4, env = "FERROLABEL_INFER_QUEUE")]
    pub infer_queue: usize,
    /// Job lease, in seconds: a background job (batch, scoring, training) whose server died is
    /// taken up again this long after its last heartbeat (docs/jobs.md).
    #[arg(long, env = "FERROLABEL_JOB_LEASE", default_value_t = 30)]
    pub job_lease: u64,
    /// The database: `postgres://USER@HOST[:PORT]/DB` (PostgreSQL, which several servers and
    /// workers can share: docs/team.md) or `sqlite://PATH`; default: SQLite in
    /// `<studies>/.ferrolabel/datastore.db`.
    #[arg(long, env = "FERROLABEL_DATASTORE_URL", hide_env_values = true)]
    pub datastore_url: Option<String>,
    /// Object storage for the content of images, labels and label revisions:
    /// `s3://BUCKET[/PREFIX]` (endpoint, region and credentials from the standard `AWS_*`
    /// environment variables; docs/team.md). Default: files in the studies folder.
    #[arg(long, env = "FERROLABEL_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// This process's cache of object-storage blobs (default `<studies>/.cache/objects`).
    #[arg(long, env = "FERROLABEL_STORAGE_CACHE")]
    pub storage_cache: Option<PathBuf>,
    /// Run no submitted jobs here (batch inference, scoring, training): they wait in the jobs
    /// table for `ferrolabel worker` processes (or other servers) on the same database. The
    /// server still submits, lists and stops them, and runs its periodic sweeps.
    #[arg(long, env = "FERROLABEL_NO_JOBS", default_value = "false", value_parser = parse_bool, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub no_jobs: bool,
    /// Largest accepted image, in voxels (default 512 x 512 x 2048).
    #[arg(long, env = "FERROLABEL_MAX_VOXELS")]
    pub max_voxels: Option<u64>,
    /// Largest accepted image after decompression (header, extensions and voxels), in MiB.
    #[arg(long, default_value_t = 4096, env = "FERROLABEL_MAX_DECOMPRESSED_MB")]
    pub max_decompressed_mb: u64,
    /// Largest accepted NIfTI header extensions (and NRRD text header), in KiB.
    #[arg(long, default_value_t = 65536, env = "FERROLABEL_MAX_EXTENSION_KB")]
    pub max_extension_kb: u64,
    /// Largest accepted decompressed : compressed size ratio of a gzip image (default: deflate's
    /// own ceiling, 1032, which refuses only headers that lie about their size).
    #[arg(long, default_value_t = 1032, env = "FERROLABEL_MAX_GZIP_RATIO")]
    pub max_gzip_ratio: u64,
    /// HTTP worker threads (default: the number of CPUs, at least 2).
    #[arg(long, env = "FERROLABEL_WORKERS")]
    pub workers: Option<usize>,
    /// Enable /session/ (false: every /session/ call answers 406).
    #[arg(long, env = "MONAI_LABEL_SESSIONS", default_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub sessions: bool,
    /// Session folder (default <studies>/.ferrolabel/sessions).
    #[arg(long, env = "MONAI_LABEL_SESSION_PATH")]
    pub session_path: Option<PathBuf>,
    /// Longest session lifetime in seconds (60 or less means 3600).
    #[arg(long, env = "MONAI_LABEL_SESSION_EXPIRY", default_value_t = 3600)]
    pub session_expiry: i64,
    /// Image patterns the datastore scan recognises: a JSON list (`["*.nii.gz","*.nrrd"]`) or a
    /// space/comma separated list.
    #[arg(long, env = "MONAI_LABEL_DATASTORE_FILE_EXT")]
    pub datastore_file_ext: Option<String>,
    /// Allowed CORS origins (JSON list or comma separated); empty means any origin.
    #[arg(long, env = "MONAI_LABEL_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Offer active-learning strategies.
    #[arg(long, env = "MONAI_LABEL_TASKS_STRATEGY", default_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub tasks_strategy: bool,
    /// Require a login (MONAI Label's auth mode): bearer tokens from `POST /auth/token`, roles
    /// from --auth-users. Off: everyone is `admin` and `/auth/` answers 404.
    #[arg(long, env = "MONAI_LABEL_AUTH_ENABLE", default_value = "false", value_parser = parse_bool, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub auth_enable: bool,
    /// The users file (JSON: user names, argon2 password hashes, roles); written by
    /// `ferrolabel auth add-user`. Required with --auth-enable.
    #[arg(long, env = "FERROLABEL_AUTH_USERS")]
    pub auth_users: Option<PathBuf>,
    /// Lifetime of a bearer token, in seconds.
    #[arg(long, env = "FERROLABEL_AUTH_TOKEN_EXPIRY", default_value_t = 3600)]
    pub auth_token_expiry: u64,
    /// `client_id` reported by `GET /auth/`.
    #[arg(
        long,
        env = "MONAI_LABEL_AUTH_CLIENT_ID",
        default_value = "monailabel-app"
    )]
    pub auth_client_id: String,
    /// Serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile.
    #[arg(long, alias = "ssl_certfile", env = "FERROLABEL_SSL_CERTFILE")]
    pub ssl_certfile: Option<PathBuf>,
    /// The PEM private key (unencrypted PKCS#8, PKCS#1 or SEC1) of --ssl-certfile.
    #[arg(long, alias = "ssl_keyfile", env = "FERROLABEL_SSL_KEYFILE")]
    pub ssl_keyfile: Option<PathBuf>,
    /// The DICOMweb settings (used when --studies is an http(s) URL).
    #[command(flatten)]
    pub dicomweb: DicomWebArgs,
}

/// Settings of a DICOMweb (PACS) datastore: MONAI Label's names, plus a bearer token, a cache
/// size bound, the local datastore folder and the STOW retry interval.
#[derive(Debug, Clone, clap::Args)]
pub struct DicomWebArgs {
    /// PACS user name (HTTP basic authentication).
    #[arg(long, env = "MONAI_LABEL_DICOMWEB_USERNAME")]
    pub dicomweb_username: Option<String>,
    /// PACS password (HTTP basic authentication).
    #[arg(long, env = "MONAI_LABEL_DICOMWEB_PASSWORD", hide_env_values = true)]
    pub dicomweb_password: Option<String>,
    /// PACS bearer token (`Authorization: Bearer`); exclusive with the user name.
    #[arg(long, env = "FERROLABEL_DICOMWEB_TOKEN", hide_env_values = true)]
    pub dicomweb_token: Option<String>,
    /// Local folder of the PACS datastore's cache (default
    /// `~/.cache/ferrolabel/dicomweb/<host>_<port>_<path>`): retrieved series in `series/`,
    /// and the local datastore (labels, revisions, sessions) in `datastore/` unless
    /// --dicomweb-datastore says otherwise.
    #[arg(long, env = "MONAI_LABEL_DICOMWEB_CACHE_PATH")]
    pub dicomweb_cache_path: Option<PathBuf>,
    /// Largest total size of the retrieved-series cache, in MiB (least recently used out).
    #[arg(
        long,
        env = "FERROLABEL_DICOMWEB_CACHE_SIZE_MB",
        default_value_t = 20480
    )]
    pub dicomweb_cache_size_mb: u64,
    /// Folder of the local datastore of a PACS (SQLite, labels and their revisions, the SEG
    /// outbox, sessions); default `<cache path>/datastore`.
    #[arg(long, env = "FERROLABEL_DICOMWEB_DATASTORE")]
    pub dicomweb_datastore: Option<PathBuf>,
    /// Path prefix of QIDO-RS resources under the service root.
    #[arg(long, env = "MONAI_LABEL_QIDO_PREFIX", default_value = "")]
    pub qido_prefix: String,
    /// Path prefix of WADO-RS resources under the service root.
    #[arg(long, env = "MONAI_LABEL_WADO_PREFIX", default_value = "")]
    pub wado_prefix: String,
    /// Path prefix of STOW-RS resources under the service root.
    #[arg(long, env = "MONAI_LABEL_STOW_PREFIX", default_value = "")]
    pub stow_prefix: String,
    /// Retrieve a series' metadata and then its frames instead of whole instances (for PACS
    /// gateways that serve frames only).
    #[arg(long, env = "MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME", default_value = "false", value_parser = parse_bool, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dicomweb_fetch_by_frame: bool,
    /// QIDO-RS filter of the image listing: `Modality=CT&StudyDate=2026...` or a JSON object
    /// `{"Modality": "CT"}`.
    #[arg(long, env = "MONAI_LABEL_DICOMWEB_SEARCH_FILTER")]
    pub dicomweb_search_filter: Option<String>,
    /// Seconds a PACS answer may stall between bytes before the request fails (504).
    #[arg(long, env = "FERROLABEL_DICOMWEB_READ_TIMEOUT", default_value_t = 60)]
    pub dicomweb_read_timeout: u64,
    /// Seconds between two re-listings of the PACS's series and retries of unsent SEGs.
    #[arg(long, env = "FERROLABEL_DICOMWEB_SYNC_INTERVAL", default_value_t = 300)]
    pub dicomweb_sync_interval: u64,
}

/// The local side of a PACS datastore (see [`DicomWebArgs`]).
#[derive(Debug, Clone)]
pub struct PacsLocal {
    /// Folder of the retrieved-series cache (`ferrolabel_dicomweb::SeriesCache`).
    pub series_cache: PathBuf,
    /// Bound of that cache, in bytes.
    pub cache_bytes: u64,
    /// Seconds between two syncs of the listing and retries of unsent SEGs.
    pub sync_interval: u64,
}

/// `true` when `studies` names a DICOMweb service (`http://` or `https://`).
pub fn is_url(studies: &str) -> bool {
    let s = studies.trim().to_ascii_lowercase();
    s.starts_with("http://") || s.starts_with("https://")
}

impl DicomWebArgs {
    /// The client settings for the service root `url`.
    pub fn client_config(&self, url: &str) -> Result<ferrolabel_dicomweb::DicomWebConfig> {
        use ferrolabel_dicomweb::{Auth, DicomWebConfig, FetchMode};
        let mut c = DicomWebConfig::new(url).map_err(|e| anyhow::anyhow!("--studies: {e}"))?;
        let user = self.dicomweb_username.clone().filter(|u| !u.is_empty());
        let token = self.dicomweb_token.clone().filter(|t| !t.is_empty());
        c.auth = match (user, token) {
            (Some(_), Some(_)) => {
                bail!("--dicomweb-username and --dicomweb-token are exclusive")
            }
            (Some(username), None) => Auth::Basic {
                username,
                password: self.dicomweb_password.clone().unwrap_or_default(),
            },
            (None, Some(token)) => Auth::Bearer(token),
            (None, None) => Auth::None,
        };
        c.qido_prefix = self.qido_prefix.clone();
        c.wado_prefix = self.wado_prefix.clone();
        c.stow_prefix = self.stow_prefix.clone();
        if let Some(f) = self
            .dicomweb_search_filter
            .as_deref()
            .filter(|f| !f.trim().is_empty())
        {
            c.search_filter = DicomWebConfig::parse_search_filter(f)
                .map_err(|e| anyhow::anyhow!("--dicomweb-search-filter: {e}"))?;
        }
        if self.dicomweb_fetch_by_frame {
            c.fetch_mode = FetchMode::Frame;
        }
        c.read_timeout = std::time::Duration::from_secs(self.dicomweb_read_timeout.max(1));
        Ok(c)
    }

    /// The cache folder: the setting, else `~/.cache/ferrolabel/dicomweb/<host>_<port>_<path>`.
    pub fn cache_path(&self, url: &str) -> PathBuf {
        if let Some(p) = self
            .dicomweb_cache_path
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
        {
            return p;
        }
        let name: String = url
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(url)
            .trim_end_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        home.join(".cache")
            .join("ferrolabel")
            .join("dicomweb")
            .join(name)
    }
}

/// Settings derived from [`ServerArgs`], shared by the handlers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The studies folder (absolute); with a PACS, the local datastore folder.
    pub studies: PathBuf,
    /// The PACS's DICOMweb settings when `--studies` is an http(s) URL.
    pub dicomweb: Option<ferrolabel_dicomweb::DicomWebConfig>,
    /// The local cache of a PACS datastore (with [`Settings::dicomweb`]).
    pub pacs: Option<PacsLocal>,
    /// `--conf` pairs.
    pub conf: BTreeMap<String, String>,
    /// Largest upload in bytes.
    pub max_upload_bytes: u64,
    /// Where uploads are staged (`<studies>/.ferrolabel/tmp`, same file system as the studies).
    pub tmp_dir: PathBuf,
    /// The log file `/logs/` serves.
    pub log_file: PathBuf,
    /// Session folder, when sessions are on.
    pub session_path: Option<PathBuf>,
    /// Session maximum lifetime.
    pub session_expiry: i64,
    /// Datastore extensions (`.nii.gz` style).
    pub extensions: Vec<String>,
    /// CORS origins; empty = any.
    pub cors_origins: Vec<String>,
}

/// Splits a setting holding a JSON list or a space/comma separated list.
pub fn parse_list(s: &str) -> Result<Vec<String>> {
    let s = s.trim();
    if s.starts_with('[') {
        let v: Vec<String> =
            serde_json::from_str(s).with_context(|| format!("not a JSON list of strings: {s}"))?;
        return Ok(v.into_iter().filter(|x| !x.trim().is_empty()).collect());
    }
    Ok(s.split([',', ' '])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect())
}

/// Turns `*.nii.gz` / `.nii.gz` / `nii.gz` patterns into `.nii.gz` extensions.
fn pattern_to_ext(p: &str) -> Result<String> {
    let ext = p.trim().trim_start_matches('*');
    let ext = if ext.starts_with('.') {
        ext.to_string()
    } else {
        format!(".{ext}")
    };
    if ext.len() < 2 || ext.contains(['*', '?', '[', '/', '\\']) {
        bail!("unsupported datastore file pattern {p:?} (use *.ext)");
    }
    Ok(ext)
}

impl ServerArgs {
    /// The `--conf` pairs as a map.
    pub fn conf_map(&self) -> BTreeMap<String, String> {
        self.conf
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect()
    }

    /// Derives the [`Settings`]; creates the studies folder and the private folders.
    pub fn settings(&self) -> Result<Settings> {
        let (folder, dicomweb, pacs) = if is_url(&self.studies) {
            let url = self.studies.trim();
            let config = self.dicomweb.client_config(url)?;
            let cache = self.dicomweb.cache_path(url);
            let folder = self
                .dicomweb
                .dicomweb_datastore
                .clone()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| cache.join("datastore"));
            let series_cache = cache.join("series");
            std::fs::create_dir_all(&series_cache)
                .with_context(|| format!("cannot create {}", series_cache.display()))?;
            let pacs = PacsLocal {
                series_cache,
                cache_bytes: self.dicomweb.dicomweb_cache_size_mb.saturating_mul(1 << 20),
                sync_interval: self.dicomweb.dicomweb_sync_interval.max(1),
            };
            (folder, Some(config), Some(pacs))
        } else {
            (PathBuf::from(&self.studies), None, None)
        };
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create the studies folder {}", folder.display()))?;
        let studies = std::fs::canonicalize(&folder)
            .with_context(|| format!("studies folder {}", folder.display()))?;
        let private = studies.join(ferrolabel_datastore::PRIVATE_DIR);
        let tmp_dir = private.join("tmp");
        std::fs::create_dir_all(&tmp_dir)
            .with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        // On SQLite one process owns the folder: whatever is left is a leftover. On PostgreSQL
        // other servers and workers share it, and their files in flight are younger.
        let shared = self.datastore_url.as_deref().is_some_and(|u| {
            matches!(
                ferrolabel_datastore::Backend::of_url(u),
                Ok(ferrolabel_datastore::Backend::Postgres)
            )
        });
        clean_dir(
            &tmp_dir,
            if shared {
                STALE_TMP
            } else {
                std::time::Duration::ZERO
            },
        );
        let session_path = self.sessions.then(|| {
            self.session_path
                .clone()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| private.join("sessions"))
        });
        let extensions = match self
            .datastore_file_ext
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(s) => parse_list(s)?
                .iter()
                .map(|p| pattern_to_ext(p))
                .collect::<Result<Vec<_>>>()?,
            None => ferrolabel_datastore::DEFAULT_EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let cors_origins = match self.cors_origins.as_deref() {
            Some(s) if !s.trim().is_empty() => parse_list(s)?,
            _ => Vec::new(),
        };
        Ok(Settings {
            studies,
            dicomweb,
            pacs,
            conf: self.conf_map(),
            max_upload_bytes: self.max_upload_mb.saturating_mul(1 << 20),
            tmp_dir,
            log_file: private.join("logs").join("app.log"),
            session_path,
            session_expiry: self.session_expiry,
            extensions,
            cors_origins: if cors_origins.iter().any(|o| o == "*") {
                Vec::new()
            } else {
                cors_origins
            },
        })
    }
}

/// How old a staged upload or temp result must be before a starting process on a shared
/// (PostgreSQL) deployment removes it: other servers and workers may share the studies folder,
/// and their files in flight are younger. A SQLite server removes them all.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes leftovers of a previous run (staged uploads, temp results) older than `min_age`.
fn clean_dir(dir: &Path, min_age: std::time::Duration) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a < min_age) {
                continue;
            }
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// clap's parser of `--precision`.
fn parse_precision(s: &str) -> Result<ferrolabel_models::Precision, String> {
    ferrolabel_models::Precision::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_patterns() {
        assert_eq!(
            parse_list(r#"["*.nii.gz", "*.nrrd"]"#).unwrap(),
            ["*.nii.gz", "*.nrrd"]
        );
        assert_eq!(
            parse_list("*.nii.gz, *.nii").unwrap(),
            ["*.nii.gz", "*.nii"]
        );
        assert_eq!(pattern_to_ext("*.nii.gz").unwrap(), ".nii.gz");
        assert_eq!(pattern_to_ext("nrrd").unwrap(), ".nrrd");
        assert!(pattern_to_ext("*").is_err());
        assert!(parse_bool("maybe").is_err());
        assert!(parse_bool("On").unwrap());
    }

    #[test]
    fn conf_values_may_start_with_a_hyphen() {
        let a = crate::serve::parse_args([
            "--app",
            "a",
            "--studies",
            "s",
            "--conf",
            "sbatch_args",
            "--partition gpu --time 10",
            "--conf",
            "slurm",
            "true",
        ])
        .unwrap();
        let conf = a.conf_map();
        assert_eq!(conf["sbatch_args"], "--partition gpu --time 10");
        assert_eq!(conf["slurm"], "true");
    }

    fn dicomweb_args(extra: &[&str]) -> DicomWebArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            dw: DicomWebArgs,
        }
        let mut argv = vec!["x"];
        argv.extend_from_slice(extra);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().dw
    }

    #[test]
    fn dicomweb_settings() {
        use ferrolabel_dicomweb::{Auth, FetchMode};
        assert!(is_url("http://pacs:8042/dicom-web") && is_url("HTTPS://pacs/rs"));
        assert!(!is_url("/data/studies") && !is_url("studies"));
        let a = dicomweb_args(&[
            "--dicomweb-username",
            "u",
            "--dicomweb-password",
            "p",
            "--wado-prefix",
            "wado",
            "--dicomweb-search-filter",
            r#"{"Modality": "CT", "StudyDate": "2026"}"#,
            "--dicomweb-fetch-by-frame",
            "--dicomweb-cache-path",
            "/c",
        ]);
        let c = a.client_config("http://pacs:8042/dicom-web/").unwrap();
        assert_eq!(c.base_url, "http://pacs:8042/dicom-web");
        assert_eq!(
            c.auth,
            Auth::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(c.wado_prefix, "wado");
        assert_eq!(c.search_filter.len(), 2);
        assert_eq!(c.fetch_mode, FetchMode::Frame);
        assert_eq!(
            a.cache_path("http://pacs:8042/dicom-web"),
            PathBuf::from("/c")
        );
        let b = dicomweb_args(&["--dicomweb-token", "t"]);
        let c = b.client_config("https://pacs/dicom-web").unwrap();
        assert_eq!(c.auth, Auth::Bearer("t".into()));
        assert!(b
            .cache_path("https://pacs:443/dicom-web")
            .ends_with("dicomweb/pacs_443_dicom-web"));
        let both = dicomweb_args(&["--dicomweb-token", "t", "--dicomweb-username", "u"]);
        assert!(both.client_config("http://pacs/dicom-web").is_err());
        assert!(dicomweb_args(&[]).client_config("ftp://pacs").is_err());
        assert!(dicomweb_args(&["--dicomweb-search-filter", "Modality"])
            .client_config("http://pacs/dicom-web")
            .is_err());
    }
}
