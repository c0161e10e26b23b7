//! [`DicomWebConfig`]: the settings of a DICOMweb datastore, as MONAI Label has them.

use std::time::Duration;

use crate::error::{DicomWebError, Result};

/// How the client authenticates to the PACS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// HTTP basic authentication (MONAI Label's `dicomweb_username` / `dicomweb_password`).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>` (an OAuth access token, e.g. Google Healthcare).
    Bearer(String),
}

/// How WADO-RS fetches a series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FetchMode {
    /// One request for the whole series (`.../studies/{study}/series/{series}`).
    #[default]
    Series,
    /// The series' metadata, then each instance's frames (MONAI Label's
    /// `dicomweb_fetch_by_frame`); instances are rebuilt from both.
    Frame,
}

/// Settings of a DICOMweb client. [`DicomWebConfig::new`] fills MONAI Label's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomWebConfig {
    /// The service root, `http(s)://HOST[:PORT]/dicom-web` (MONAI Label's `--studies`), without
    /// a trailing slash.
    pub base_url: String,
    /// Credentials.
    pub auth: Auth,
    /// Path inserted between the base URL and QIDO-RS resources (`qido_prefix`; empty for
    /// Orthanc, `rs` for DCM4CHEE's `/dcm4chee-arc/aets/DCM4CHEE/rs`-style roots when the base
    /// stops before it).
    pub qido_prefix: String,
    /// Path prefix of WADO-RS resources (`wado_prefix`).
    pub wado_prefix: String,
    /// Path prefix of STOW-RS resources (`stow_prefix`).
    pub stow_prefix: String,
    /// Query parameters added to every image listing (MONAI Label's `dicomweb_search_filter`,
    /// default `Modality=CT`).
    pub search_filter: Vec<(String, String)>,
    /// Series or frame retrieval.
    pub fetch_mode: FetchMode,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on a whole QIDO-RS or STOW-RS exchange.
    pub request_timeout: Duration,
    /// Limit on a whole WADO-RS series retrieval.
    pub retrieve_timeout: Duration,
    /// Limit on waiting for the next bytes of any answer (a PACS that stalls mid-stream).
    pub read_timeout: Duration,
    /// QIDO-RS page size (`limit`); listings page with `offset` until a short page.
    pub page_size: usize,
    /// Most series a listing returns (a PACS that ignores `offset` cannot loop forever).
    pub max_listed: usize,
    /// Most instances one retrieved series may hold.
    pub max_instances: usize,
    /// Most bytes one retrieved series may hold (sum of its parts).
    pub max_series_bytes: u64,
}

impl DicomWebConfig {
    /// Settings for `base_url` with the defaults: no auth, empty prefixes, filter
    /// `Modality=CT`, series retrieval, 10 s to connect, 60 s per QIDO/STOW exchange, 30 min
    /// per series, 60 s idle read, pages of 500, at most 1,000,000 series listed, 4096
    /// instances and 4 GiB per series.
    pub fn new(base_url: &str) -> Result<DicomWebConfig> {
        let base = base_url.trim().trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| DicomWebError::Config(format!("base URL {base_url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(DicomWebError::Config(format!(
                "base URL {base_url:?} is not http(s)://HOST/..."
            )));
        }
        Ok(DicomWebConfig {
            base_url: base.to_string(),
            auth: Auth::None,
            qido_prefix: String::new(),
            wado_prefix: String::new(),
            stow_prefix: String::new(),
            search_filter: vec![("Modality".into(), "CT".into())],
            fetch_mode: FetchMode::Series,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retrieve_timeout: Duration::from_secs(1800),
            read_timeout: Duration::from_secs(60),
            page_size: 500,
            max_listed: 1_000_000,
            max_instances: 4096,
            max_series_bytes: 4 << 30,
        })
    }

    /// Parses a search filter written `Key=Value&Key2=Value2` (or a `{"Key": "Value"}` JSON
    /// object, as MONAI Label's `dicomweb_search_filter` is written) into
    /// [`DicomWebConfig::search_filter`].
    pub fn parse_search_filter(text: &str) -> Result<Vec<(String, String)>> {
        let text = text.trim();
        if text.starts_with('{') {
            let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| DicomWebError::Config(format!("search filter {text:?}: {e}")))?;
            return v
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => Ok((k, s)),
                    serde_json::Value::Number(n) => Ok((k, n.to_string())),
                    other => Err(DicomWebError::Config(format!(
                        "search filter value of {k} is {other}, not a string"
                    ))),
                })
                .collect();
        }
        text.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(DicomWebError::Config(format!(
                    "search filter term {p:?} is not Key=Value"
                ))),
            })
            .collect()
    }

    /// The URL of a resource under one of the prefixes.
    pub(crate) fn url(&self, prefix: &str, path: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("{}/{}", self.base_url, path)
        } else {
            format!("{}/{}/{}", self.base_url, prefix, path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_filters() {
        let mut c = DicomWebConfig::new("http://pacs:8042/dicom-web/").unwrap();
        assert_eq!(
            c.url(&c.qido_prefix, "series"),
            "http://pacs:8042/dicom-web/series"
        );
        c.wado_prefix = "/wado/".into();
        assert_eq!(
            c.url(&c.wado_prefix, "studies/1"),
            "http://pacs:8042/dicom-web/wado/studies/1"
        );
        assert!(DicomWebConfig::new("ftp://x/dicom-web").is_err());
        assert!(DicomWebConfig::new("not a url").is_err());
        assert_eq!(
            DicomWebConfig::parse_search_filter("Modality=CT&StudyDate=2026").unwrap(),
            vec![
                ("Modality".to_string(), "CT".to_string()),
                ("StudyDate".to_string(), "2026".to_string())
            ]
        );
        assert_eq!(
            DicomWebConfig::parse_search_filter(r#"{"Modality": "CT"}"#).unwrap(),
            vec![("Modality".to_string(), "CT".to_string())]
        );
        assert!(DicomWebConfig::parse_search_filter("Modality").is_err());
    }
}
