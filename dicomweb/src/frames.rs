//! WADO-RS by frame (MONAI Label's `dicomweb_fetch_by_frame`): the series' metadata
//! (`.../series/{uid}/metadata`), then each instance's frames
//! (`.../instances/{uid}/frames/1,2,...`) as bulk data in the stored transfer syntax. Each
//! instance is rebuilt into a DICOM file from its metadata (read by the `dicom-json` crate) and
//! its frames (native pixel data, or one fragment per frame when encapsulated), so that the
//! assembler sees the same files a series retrieval would give. Used by PACS gateways that
//! serve frames but not whole instances, and to skip attributes a PACS adds to instances.

use std::path::{Path, PathBuf};

use dicom_core::value::{PixelFragmentSequence, Value as DicomValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::client::{check_uid, DicomWebClient, RetrievedFiles};
use crate::error::{DicomWebError, Result};
use crate::model::{first_int, first_string, tag};

/// SOPClassUID.
const SOP_CLASS_UID: &str = "00080016";
/// CT Image Storage.
const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// NumberOfFrames.
const NUMBER_OF_FRAMES: &str = "00280008";
use crate::multipart::Event;

/// WADO-RS Accept for frames: bulk data in the stored transfer syntax.
const ACCEPT_FRAMES: &str =
    "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*";
/// Instances fetched at the same time.
const CONCURRENT_INSTANCES: usize = 4;
/// Most frames in one instance.
const MAX_FRAMES: i64 = 65_536;
/// Explicit VR Little Endian: what `application/octet-stream` frames are when no syntax is named.
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// One instance to fetch: its position in the series, metadata and frame count.
struct Job {
    index: usize,
    sop_instance: String,
    sop_class: String,
    frames: i64,
    metadata: Value,
}

impl DicomWebClient {
    /// Retrieves a series frame by frame into `dir` (`instance-00001.dcm`, ...); see the module
    /// documentation. Limits are the series retrieval's (`max_instances`, `max_series_bytes`).
    pub(crate) async fn retrieve_frames_to_dir(
        &self,
        study_uid: &str,
        series_uid: &str,
        dir: &Path,
    ) -> Result<RetrievedFiles> {
        let meta_url = self.config.url(
            &self.config.wado_prefix,
            &format!("studies/{study_uid}/series/{series_uid}/metadata"),
        );
        let metadata = self.series_metadata(study_uid, series_uid).await?;
        if metadata.is_empty() {
            return Err(DicomWebError::bad(&meta_url, "the series has no instances"));
        }
        if metadata.len() > self.config.max_instances {
            return Err(DicomWebError::bad(
                &meta_url,
                format!("more than {} instances", self.config.max_instances),
            ));
        }
        let mut jobs = Vec::with_capacity(metadata.len());
        for (index, md) in metadata.into_iter().enumerate() {
            let uid = |t: &str, what: &str| -> Result<String> {
                let v = first_string(&md, t).ok_or_else(|| {
                    DicomWebError::bad(&meta_url, format!("instance {} has no {what}", index + 1))
                })?;
                check_uid(&v).map_err(|_| {
                    DicomWebError::bad(
                        &meta_url,
                        format!("instance {}: bad {what} {v:?}", index + 1),
                    )
                })?;
                Ok(v)
            };
            let sop_instance = uid(tag::SOP_INSTANCE_UID, "SOPInstanceUID")?;
            // anonymised series may carry an empty SOPClassUID (the shipped one does); a CT
            // image is then filed as CT Image Storage
            let sop_class = if first_string(&md, SOP_CLASS_UID).is_none()
                && first_string(&md, tag::MODALITY).as_deref() == Some("CT")
            {
                CT_IMAGE_STORAGE.to_string()
            } else {
                uid(SOP_CLASS_UID, "SOPClassUID")?
            };
            let frames = first_int(&md, NUMBER_OF_FRAMES).unwrap_or(1);
            if !(1..=MAX_FRAMES).contains(&frames) {
                return Err(DicomWebError::bad(
                    &meta_url,
                    format!("instance {}: NumberOfFrames {frames}", index + 1),
                ));
            }
            jobs.push(Job {
                index,
                sop_instance,
                sop_class,
                frames,
                metadata: md,
            });
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| DicomWebError::io(format!("creating {}", dir.display()), e))?;
        let written: Vec<(PathBuf, u64)> = futures_util::stream::iter(jobs)
            .map(|job| self.fetch_instance(study_uid, series_uid, job, dir))
            .buffered(CONCURRENT_INSTANCES)
            .try_collect()
            .await?;
        let mut out = RetrievedFiles {
            paths: Vec::with_capacity(written.len()),
            bytes: 0,
        };
        for (path, size) in written {
            out.bytes += size;
            out.paths.push(path);
        }
        if out.bytes > self.config.max_series_bytes {
            return Err(DicomWebError::bad(
                &meta_url,
                format!("series over {} bytes", self.config.max_series_bytes),
            ));
        }
        Ok(out)
    }

    /// Fetches one instance's frames and writes the rebuilt file; returns its path and size.
    async fn fetch_instance(
        &self,
        study_uid: &str,
        series_uid: &str,
        job: Job,
        dir: &Path,
    ) -> Result<(PathBuf, u64)> {
        let list: Vec<String> = (1..=job.frames).map(|f| f.to_string()).collect();
        let url = self.config.url(
            &self.config.wado_prefix,
            &format!(
                "studies/{study_uid}/series/{series_uid}/instances/{}/frames/{}",
                job.sop_instance,
                list.join(",")
            ),
        );
        let (mut resp, mut splitter) = self.get_multipart(&url, ACCEPT_FRAMES).await?;
        let mut parts: Vec<(Option<String>, Vec<u8>)> = Vec::new();
        let mut total = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| DicomWebError::from_reqwest(&url, e))?
        {
            for ev in splitter
                .feed(&chunk)
                .map_err(|e| DicomWebError::bad(&url, e))?
            {
                match ev {
                    Event::Start(ct) => {
                        if parts.len() as i64 >= job.frames {
                            return Err(DicomWebError::bad(
                                &url,
                                format!("more than the {} frames asked for", job.frames),
                            ));
                        }
                        parts.push((ct, Vec::new()));
                    }
                    Event::Data(d) => {
                        total += d.len() as u64;
                        if total > self.config.max_series_bytes {
                            return Err(DicomWebError::bad(
                                &url,
                                format!("instance over {} bytes", self.config.max_series_bytes),
                            ));
                        }
                        if let Some((_, buf)) = parts.last_mut() {
                            buf.extend_from_slice(&d);
                        }
                    }
                    Event::End => {}
                }
            }
        }
        splitter.finish().map_err(|e| DicomWebError::bad(&url, e))?;
        if parts.len() as i64 != job.frames {
            return Err(DicomWebError::bad(
                &url,
                format!("{} frames sent, {} asked for", parts.len(), job.frames),
            ));
        }
        let path = dir.join(format!("instance-{:05}.dcm", job.index + 1));
        let bytes = tokio::task::spawn_blocking(move || build_instance(&url, job, parts))
            .await
            .map_err(|e| DicomWebError::io("rebuilding an instance", std::io::Error::other(e)))??;
        let size = bytes.len() as u64;
        tokio::fs::write(&path, bytes)
            .await
            .map_err(|e| DicomWebError::io(format!("writing {}", path.display()), e))?;
        Ok((path, size))
    }
}

/// The transfer syntax of a frame part: its `transfer-syntax` parameter, or what its media type
/// implies.
fn part_syntax(url: &str, content_type: Option<&str>) -> Result<String> {
    let ct = content_type.unwrap_or("application/octet-stream");
    let mut params = ct.split(';');
    let mime = params.next().unwrap_or("").trim().to_ascii_lowercase();
    for p in params {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("transfer-syntax") {
                let v = v.trim().trim_matches('"');
                if v != "*" {
                    return Ok(v.to_string());
                }
            }
        }
    }
    match mime.as_str() {
        "application/octet-stream" => Ok(EXPLICIT_LE.into()),
        "image/jp2" => Ok("1.2.840.10008.1.2.4.90".into()),
        "image/jls" => Ok("1.2.840.10008.1.2.4.80".into()),
        "image/jpeg" => Ok("1.2.840.10008.1.2.4.70".into()),
        _ => Err(DicomWebError::bad(
            url,
            format!("a frame part is {ct}, which names no transfer syntax"),
        )),
    }
}

/// An instance's DICOM file from its metadata and frames.
fn build_instance(url: &str, job: Job, parts: Vec<(Option<String>, Vec<u8>)>) -> Result<Vec<u8>> {
    let syntax = part_syntax(url, parts[0].0.as_deref())?;
    for (ct, _) in &parts[1..] {
        if part_syntax(url, ct.as_deref())? != syntax {
            return Err(DicomWebError::bad(
                url,
                "frames of one instance in two syntaxes",
            ));
        }
    }
    let mut obj: InMemDicomObject = dicom_json::from_value(job.metadata).map_err(|e| {
        DicomWebError::bad(
            url,
            format!("metadata of {} unreadable: {e}", job.sop_instance),
        )
    })?;
    // group 0002 belongs to the file meta table; a PACS may include it in metadata
    let meta_tags: Vec<Tag> = obj
        .iter()
        .map(|e| e.header().tag)
        .filter(|t| t.group() == 0x0002)
        .collect();
    for t in meta_tags {
        obj.remove_element(t);
    }
    let class_empty = obj
        .element(tags::SOP_CLASS_UID)
        .ok()
        .and_then(|e| e.to_str().ok())
        .is_none_or(|s| s.trim_end_matches(['\0', ' ']).is_empty());
    if class_empty {
        obj.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            dicom_core::PrimitiveValue::from(job.sop_class.as_str()),
        ));
    }
    let native = syntax == EXPLICIT_LE || syntax == "1.2.840.10008.1.2";
    let frames: Vec<Vec<u8>> = parts.into_iter().map(|(_, b)| b).collect();
    let element = if native {
        let int = |t| {
            obj.element(t)
                .ok()
                .and_then(|e| e.to_int::<u32>().ok())
                .unwrap_or(0) as usize
        };
        let expected = int(tags::ROWS)
            * int(tags::COLUMNS)
            * int(tags::SAMPLES_PER_PIXEL).max(1)
            * int(tags::BITS_ALLOCATED).div_ceil(8);
        if let Some(f) = frames.iter().position(|f| f.len() != expected) {
            return Err(DicomWebError::bad(
                url,
                format!(
                    "frame {} of {} has {} bytes, its metadata says {expected}",
                    f + 1,
                    job.sop_instance,
                    frames[f].len()
                ),
            ));
        }
        let vr = if int(tags::BITS_ALLOCATED) > 8 {
            VR::OW
        } else {
            VR::OB
        };
        let mut data = frames.concat();
        if data.len() % 2 == 1 {
            data.push(0);
        }
        DataElement::new(
            tags::PIXEL_DATA,
            vr,
            dicom_core::PrimitiveValue::U8(data.into()),
        )
    } else {
        let fragments = frames
            .into_iter()
            .map(|mut f| {
                if f.len() % 2 == 1 {
                    f.push(0);
                }
                f
            })
            .collect::<Vec<_>>();
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            DicomValue::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), fragments)),
        )
    };
    obj.put(element);
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(syntax.as_str())
                .media_storage_sop_class_uid(job.sop_class.as_str())
                .media_storage_sop_instance_uid(job.sop_instance.as_str()),
        )
        .map_err(|e| DicomWebError::bad(url, format!("rebuilding {}: {e}", job.sop_instance)))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| DicomWebError::bad(url, format!("writing {}: {e}", job.sop_instance)))?;
    Ok(bytes)
}
