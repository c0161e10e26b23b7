//! WADO-RS: a series streamed part by part into files, then assembled with `ferrolabel-dicom`.

use std::path::Path;

use ferrolabel_dicom::{AssembleOptions, DicomError, Series};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use tokio::io::AsyncWriteExt;

use crate::client::{check_uid, DicomWebClient, RetrievedFiles, ACCEPT_DICOM};
use crate::config::FetchMode;
use crate::error::{DicomWebError, Result};
use crate::multipart::{boundary_of, Event, Splitter};

impl DicomWebClient {
    /// WADO-RS: streams every instance of a series into `dir` (created if missing), one file
    /// per part (`instance-00001.dcm`, ...), never holding more than one network chunk in
    /// memory. Parts whose Content-Type is not `application/dicom`, a broken multipart, or more
    /// instances or bytes than the limits are a [`DicomWebError::BadAnswer`]; files already
    /// written stay in `dir` (retrieve into a temporary folder).
    pub async fn retrieve_series_to_dir(
        &self,
        study_uid: &str,
        series_uid: &str,
        dir: &Path,
    ) -> Result<RetrievedFiles> {
        if self.config.fetch_mode == FetchMode::Frame {
            check_uid(study_uid)?;
            check_uid(series_uid)?;
            return self
                .retrieve_frames_to_dir(study_uid, series_uid, dir)
                .await;
        }
        let path = format!(
            "studies/{}/series/{}",
            check_uid(study_uid)?,
            check_uid(series_uid)?
        );
        let url = self.config.url(&self.config.wado_prefix, &path);
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| DicomWebError::io(format!("creating {}", dir.display()), e))?;
        let (mut resp, mut splitter) = self.get_multipart(&url, ACCEPT_DICOM).await?;
        let mut out = RetrievedFiles {
            paths: Vec::new(),
            bytes: 0,
        };
        let mut file: Option<tokio::fs::File> = None;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| DicomWebError::from_reqwest(&url, e))?
        {
            let events = splitter
                .feed(&chunk)
                .map_err(|e| DicomWebError::bad(&url, e))?;
            for ev in events {
                match ev {
                    Event::Start(ct) => {
                        if let Some(ct) = ct {
                            let mime = ct.split(';').next().unwrap_or("").trim();
                            if mime != "application/dicom" {
                                return Err(DicomWebError::bad(
                                    &url,
                                    format!(
                                        "part {} is {ct}, not application/dicom",
                                        out.paths.len() + 1
                                    ),
                                ));
                            }
                        }
                        if out.paths.len() >= self.config.max_instances {
                            return Err(DicomWebError::bad(
                                &url,
                                format!("more than {} instances", self.config.max_instances),
                            ));
                        }
                        let p = dir.join(format!("instance-{:05}.dcm", out.paths.len() + 1));
                        let f = tokio::fs::File::create(&p).await.map_err(|e| {
                            DicomWebError::io(format!("creating {}", p.display()), e)
                        })?;
                        out.paths.push(p);
                        file = Some(f);
                    }
                    Event::Data(d) => {
                        out.bytes += d.len() as u64;
                        if out.bytes > self.config.max_series_bytes {
                            return Err(DicomWebError::bad(
                                &url,
                                format!("series over {} bytes", self.config.max_series_bytes),
                            ));
                        }
                        if let Some(f) = file.as_mut() {
                            f.write_all(&d).await.map_err(|e| {
                                DicomWebError::io(format!("writing into {}", dir.display()), e)
                            })?;
                        }
                    }
                    Event::End => {
                        if let Some(mut f) = file.take() {
                            f.flush().await.map_err(|e| {
                                DicomWebError::io(format!("writing into {}", dir.display()), e)
                            })?;
                        }
                    }
                }
            }
        }
        splitter.finish().map_err(|e| DicomWebError::bad(&url, e))?;
        if out.paths.is_empty() {
            return Err(DicomWebError::bad(&url, "the series has no instances"));
        }
        Ok(out)
    }

    /// GETs a WADO-RS resource with `accept` (within the retrieval timeout) and returns the
    /// answer with a splitter for its `multipart/related` body.
    pub(crate) async fn get_multipart(
        &self,
        url: &str,
        accept: &str,
    ) -> Result<(reqwest::Response, Splitter)> {
        let req = self
            .request(Method::GET, url)
            .header(ACCEPT, accept)
            .timeout(self.config.retrieve_timeout);
        let resp = self.send(url, req).await?;
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = boundary_of(ct).map_err(|e| DicomWebError::bad(url, e))?;
        Ok((resp, Splitter::new(&boundary)))
    }

    /// WADO-RS + assembly: retrieves a series into a temporary folder (removed afterwards) and
    /// assembles it with `ferrolabel-dicom` on a blocking thread. The [`Series`] holds the
    /// volume and the source's [`ferrolabel_dicom::SeriesInfo`] that the SEG writer needs.
    pub async fn retrieve_series(
        &self,
        study_uid: &str,
        series_uid: &str,
        options: &AssembleOptions,
    ) -> Result<Series> {
        let tmp = tempfile::Builder::new()
            .prefix("ferrolabel-wado-")
            .tempdir()
            .map_err(|e| DicomWebError::io("creating a temporary folder", e))?;
        let url = self.config.url(
            &self.config.wado_prefix,
            &format!("studies/{study_uid}/series/{series_uid}"),
        );
        self.retrieve_series_to_dir(study_uid, series_uid, tmp.path())
            .await?;
        let mut options = options.clone();
        options.series_uid = Some(series_uid.to_string());
        let dir = tmp.path().to_path_buf();
        let series = series_uid.to_string();
        let assembled =
            tokio::task::spawn_blocking(move || ferrolabel_dicom::assemble_dir(&dir, &options))
                .await
                .map_err(|e| {
                    DicomWebError::io("assembly thread", std::io::Error::other(e.to_string()))
                })?;
        drop(tmp);
        assembled.map_err(|e| assembly_error(&url, series, e))
    }
}

/// Maps an assembly failure: unreadable parts are the PACS's garbage, the rest the series'.
pub(crate) fn assembly_error(url: &str, series: String, e: DicomError) -> DicomWebError {
    match e {
        DicomError::NotDicom { .. } | DicomError::Corrupt { .. } | DicomError::Empty => {
            DicomWebError::bad(url, e.to_string())
        }
        DicomError::Io { context, source } => DicomWebError::Io { context, source },
        other => DicomWebError::Series {
            series,
            source: other,
        },
    }
}
