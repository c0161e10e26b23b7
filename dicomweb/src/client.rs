//! [`DicomWebClient`]: QIDO-RS listings, WADO-RS series retrieval (streamed to files, then
//! assembled with `ferrolabel-dicom`) and STOW-RS storage, over async `reqwest`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;

use crate::config::{Auth, DicomWebConfig};
use crate::error::{DicomWebError, Result};
use crate::model::{first_string, referenced_series, tag, values, SegSeries, SeriesSummary};
use crate::multipart::{encode_related, new_boundary};

/// Largest QIDO-RS / metadata / STOW-RS JSON answer read (bytes).
const MAX_JSON_BYTES: usize = 64 << 20;
/// Attributes asked for in series listings beyond the QIDO-RS defaults.
const INCLUDE_FIELDS: &[&str] = &[
    tag::PATIENT_ID,
    tag::SERIES_DESCRIPTION,
    tag::NUMBER_OF_SERIES_RELATED_INSTANCES,
];
/// WADO-RS Accept: DICOM instances in their stored transfer syntax (no transcoding).
pub(crate) const ACCEPT_DICOM: &str =
    "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

/// Files of a retrieved series, in the order the PACS sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrievedFiles {
    /// One file per instance.
    pub paths: Vec<PathBuf>,
    /// Sum of their sizes.
    pub bytes: u64,
}

/// What STOW-RS stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    /// SOPInstanceUIDs the PACS reports as stored (ReferencedSOPSequence).
    pub stored: Vec<String>,
}

/// A DICOMweb client. Cheap to clone (the HTTP connection pool is shared).
#[derive(Debug, Clone)]
pub struct DicomWebClient {
    http: reqwest::Client,
    pub(crate) config: DicomWebConfig,
}

impl DicomWebClient {
    /// A client for `config` (timeouts and credentials are applied to every request).
    pub fn new(config: DicomWebConfig) -> Result<DicomWebClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(concat!("ferrolabel-dicomweb/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DicomWebError::Config(format!("HTTP client: {e}")))?;
        Ok(DicomWebClient { http, config })
    }

    /// The settings.
    pub fn config(&self) -> &DicomWebConfig {
        &self.config
    }

    /// A request with the configured credentials.
    pub(crate) fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.config.auth {
            Auth::None => req,
            Auth::Basic { username, password } => req.basic_auth(username, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        }
    }

    /// Sends a request and checks for a 2xx answer.
    pub(crate) async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| DicomWebError::from_reqwest(url, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // the start of the body helps the user; a stalled body is cut by the read timeout
        let mut body = Vec::new();
        let mut resp = resp;
        while body.len() < 512 {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        body.truncate(512);
        Err(DicomWebError::Status {
            url: url.into(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Reads a whole answer (at most `MAX_JSON_BYTES`).
    async fn body(url: &str, mut resp: reqwest::Response) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(c) = resp
            .chunk()
            .await
            .map_err(|e| DicomWebError::from_reqwest(url, e))?
        {
            if body.len() + c.len() > MAX_JSON_BYTES {
                return Err(DicomWebError::bad(url, "JSON answer over 64 MiB"));
            }
            body.extend_from_slice(&c);
        }
        Ok(body)
    }

    /// GETs a DICOM JSON array (QIDO-RS, metadata); 204 and an empty body are an empty list.
    async fn get_json_array(&self, url: &str, query: &[(String, String)]) -> Result<Vec<Value>> {
        let req = self
            .request(Method::GET, url)
            .query(query)
            .header(ACCEPT, "application/dicom+json, application/json")
            .timeout(self.config.request_timeout);
        let body = Self::body(url, self.send(url, req).await?).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(other) => Err(DicomWebError::bad(
                url,
                format!("expected a JSON array, got {}", kind(&other)),
            )),
            Err(e) => Err(DicomWebError::bad(url, format!("invalid JSON: {e}"))),
        }
    }

    /// QIDO-RS `/series` with `filter`, paged with `limit`/`offset` (the configured page size)
    /// until a short or empty page; a page that adds no new series also ends the listing (a
    /// PACS that ignores `offset`). Results lacking a study or series UID are skipped.
    pub async fn list_series(&self, filter: &[(String, String)]) -> Result<Vec<SeriesSummary>> {
        let url = self.config.url(&self.config.qido_prefix, "series");
        let page = self.config.page_size.max(1);
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let mut query = filter.to_vec();
            for f in INCLUDE_FIELDS {
                query.push(("includefield".into(), (*f).into()));
            }
            query.push(("limit".into(), page.to_string()));
            query.push(("offset".into(), out.len().to_string()));
            let items = self.get_json_array(&url, &query).await?;
            let n = items.len();
            let before = out.len();
            for item in &items {
                if let Some(s) = SeriesSummary::from_json(item) {
                    if seen.insert(s.series_instance_uid.clone()) {
                        out.push(s);
                    }
                }
            }
            if out.len() > self.config.max_listed {
                return Err(DicomWebError::bad(
                    &url,
                    format!("more than {} series listed", self.config.max_listed),
                ));
            }
            if n < page || out.len() == before {
                return Ok(out);
            }
        }
    }

    /// The images of the datastore: series matching the configured search filter
    /// (`Modality=CT` by default).
    pub async fn list_ct_series(&self) -> Result<Vec<SeriesSummary>> {
        self.list_series(&self.config.search_filter).await
    }

    /// One series by its SeriesInstanceUID (QIDO-RS), or `None` when the PACS lacks it.
    pub async fn find_series(&self, series_uid: &str) -> Result<Option<SeriesSummary>> {
        let filter = [("SeriesInstanceUID".to_string(), series_uid.to_string())];
        let found = self.list_series(&filter).await?;
        Ok(found
            .into_iter()
            .find(|s| s.series_instance_uid == series_uid))
    }

    /// WADO-RS metadata of a series: one DICOM JSON dataset per instance (bulk data left out).
    pub async fn series_metadata(&self, study_uid: &str, series_uid: &str) -> Result<Vec<Value>> {
        let path = format!(
            "studies/{}/series/{}/metadata",
            check_uid(study_uid)?,
            check_uid(series_uid)?
        );
        let url = self.config.url(&self.config.wado_prefix, &path);
        self.get_json_array(&url, &[]).await
    }

    /// SEG series of study `study_uid` that reference `source_series_uid` (QIDO-RS
    /// `Modality=SEG` in the study, then each SEG's metadata for its ReferencedSeriesSequence).
    pub async fn list_seg_series(
        &self,
        study_uid: &str,
        source_series_uid: &str,
    ) -> Result<Vec<SegSeries>> {
        let filter = [
            (
                "StudyInstanceUID".to_string(),
                check_uid(study_uid)?.to_string(),
            ),
            ("Modality".to_string(), "SEG".to_string()),
        ];
        let mut out = Vec::new();
        for series in self.list_series(&filter).await? {
            let meta = self
                .series_metadata(&series.study_instance_uid, &series.series_instance_uid)
                .await?;
            let mut refs: Vec<String> = Vec::new();
            let mut instances = Vec::new();
            for ds in &meta {
                for r in referenced_series(ds) {
                    if !refs.contains(&r) {
                        refs.push(r);
                    }
                }
                if let Some(uid) = first_string(ds, tag::SOP_INSTANCE_UID) {
                    instances.push(uid);
                }
            }
            if refs.iter().any(|r| r == source_series_uid) {
                out.push(SegSeries {
                    series,
                    referenced_series: refs,
                    instances,
                });
            }
        }
        Ok(out)
    }

    /// STOW-RS: stores DICOM instances (Part 10 files) in study `study_uid` (or lets the PACS
    /// file them by their own StudyInstanceUID when `None`). Instances the PACS refuses
    /// (FailedSOPSequence) are a [`DicomWebError::Rejected`].
    pub async fn store_instances(
        &self,
        study_uid: Option<&str>,
        instances: &[&[u8]],
    ) -> Result<StoreOutcome> {
        let path = match study_uid {
            Some(s) => format!("studies/{}", check_uid(s)?),
            None => "studies".to_string(),
        };
        let url = self.config.url(&self.config.stow_prefix, &path);
        let boundary = new_boundary();
        let body = encode_related(&boundary, instances);
        let req = self
            .request(Method::POST, &url)
            .header(
                CONTENT_TYPE,
                format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
            )
            .header(ACCEPT, "application/dicom+json, application/json")
            .timeout(self.config.request_timeout)
            .body(body);
        let resp = self.send(&url, req).await?;
        let body = Self::body(&url, resp).await?;
        let answer: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| DicomWebError::bad(&url, format!("invalid JSON: {e}")))?
        };
        let failed = values(&answer, tag::FAILED_SOP_SEQUENCE);
        let stored: Vec<String> = values(&answer, tag::REFERENCED_SOP_SEQUENCE)
            .iter()
            .filter_map(|i| first_string(i, tag::REFERENCED_SOP_INSTANCE_UID))
            .collect();
        if !failed.is_empty() || stored.len() < instances.len() {
            let detail: Vec<String> = failed
                .iter()
                .map(|i| {
                    format!(
                        "{} (reason {})",
                        first_string(i, tag::REFERENCED_SOP_INSTANCE_UID).unwrap_or_default(),
                        first_string(i, tag::FAILURE_REASON).unwrap_or_default()
                    )
                })
                .collect();
            return Err(DicomWebError::Rejected {
                url,
                failed: instances
                    .len()
                    .saturating_sub(stored.len())
                    .max(failed.len()),
                detail: if detail.is_empty() {
                    "the answer lists fewer stored instances than were sent".into()
                } else {
                    detail.join("; ")
                },
            });
        }
        Ok(StoreOutcome { stored })
    }

    /// STOW-RS of one Part 10 file (a DICOM SEG written by `ferrolabel-dicom`), read into
    /// memory (SEGs are small).
    pub async fn store_file(&self, study_uid: Option<&str>, path: &Path) -> Result<StoreOutcome> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| DicomWebError::io(format!("reading {}", path.display()), e))?;
        self.store_instances(study_uid, &[&bytes]).await
    }
}

/// A UID safe to put in a URL path (digits and dots, as DICOM UIDs are).
pub(crate) fn check_uid(uid: &str) -> Result<&str> {
    if uid.is_empty() || uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(DicomWebError::Config(format!("{uid:?} is not a DICOM UID")));
    }
    Ok(uid)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids() {
        assert!(check_uid("1.2.840.10008").is_ok());
        assert!(check_uid("../x").is_err());
        assert!(check_uid("").is_err());
    }
}
