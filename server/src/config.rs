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
    /// Studies folder (the datastore); created if missing.
    #[arg(long, env = "MONAI_LABEL_STUDIES")]
    pub studies: PathBuf,
    /// App setting, repeatable: `--conf bundle_dir /path/to/bundle`, `--conf skip_strategies true`.
    #[arg(long, num_args = 2, value_names = ["KEY", "VALUE"], action = ArgAction::Append)]
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
    /// Largest accepted upload (image, label, session, weights) in MiB; checked while streaming.
    #[arg(long, default_value_t = 2048, env = "FERROLABEL_MAX_UPLOAD_MB")]
    pub max_upload_mb: u64,
    /// Inference requests that may wait for the engine; more are answered 429.
    #[arg(long, default_value_t = 4, env = "FERROLABEL_INFER_QUEUE")]
    pub infer_queue: usize,
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
}

/// Settings derived from [`ServerArgs`], shared by the handlers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The studies folder (absolute).
    pub studies: PathBuf,
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
        std::fs::create_dir_all(&self.studies).with_context(|| {
            format!(
                "cannot create the studies folder {}",
                self.studies.display()
            )
        })?;
        let studies = std::fs::canonicalize(&self.studies)
            .with_context(|| format!("studies folder {}", self.studies.display()))?;
        let private = studies.join(ferrolabel_datastore::PRIVATE_DIR);
        let tmp_dir = private.join("tmp");
        std::fs::create_dir_all(&tmp_dir)
            .with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        clean_dir(&tmp_dir);
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

/// Removes leftovers of a previous run (staged uploads, temp results).
fn clean_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
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
}
