//! [`SeriesInfo`] as JSON: what a server keeps next to an image assembled from DICOM, so that
//! SEGs of its labels can be written (and SEGs read onto it) later without the source files.

use std::str::FromStr;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::InMemDicomObject;
use serde_json::{json, Value};

use crate::error::{DicomError, Result};
use crate::series::{SeriesInfo, SliceRef};

/// Version of the JSON layout written by [`SeriesInfo::to_json`].
const VERSION: u64 = 1;

fn bad(reason: impl Into<String>) -> DicomError {
    DicomError::Corrupt {
        name: "series sidecar".into(),
        reason: reason.into(),
    }
}

fn floats<const N: usize>(v: &Value, key: &str) -> Result<[f64; N]> {
    let list = v
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("no {key}")))?;
    let nums: Vec<f64> = list.iter().filter_map(Value::as_f64).collect();
    <[f64; N]>::try_from(nums.as_slice()).map_err(|_| bad(format!("{key} is not {N} numbers")))
}

fn string(v: &Value, key: &str) -> Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(format!("no {key}")))
}

fn size(v: &Value, key: &str) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad(format!("no {key}")))
}

impl SeriesInfo {
    /// The series as a JSON object (UIDs, grid, per-slice references, and the identity
    /// attributes as `[tag, VR, text]` triples); [`SeriesInfo::from_json`] reads it back.
    pub fn to_json(&self) -> Value {
        let slices: Vec<Value> = self
            .slices
            .iter()
            .map(|s| {
                json!({
                    "file": s.file,
                    "sop_class_uid": s.sop_class_uid,
                    "sop_instance_uid": s.sop_instance_uid,
                    "frame_number": s.frame_number,
                    "position": s.position,
                })
            })
            .collect();
        let identity: Vec<Value> = self
            .identity
            .iter()
            .filter_map(|e| {
                let text = e.to_str().ok()?;
                let tag = e.header().tag;
                Some(json!([
                    format!("{:04X}{:04X}", tag.group(), tag.element()),
                    e.header().vr.to_string(),
                    text,
                ]))
            })
            .collect();
        json!({
            "version": VERSION,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "rows": self.rows,
            "columns": self.columns,
            "orientation": self.orientation,
            "pixel_spacing": self.pixel_spacing,
            "slice_spacing": self.slice_spacing,
            "slice_thickness": self.slice_thickness,
            "slices": slices,
            "identity": identity,
        })
    }

    /// Reads what [`SeriesInfo::to_json`] wrote; anything else is [`DicomError::Corrupt`].
    pub fn from_json(v: &Value) -> Result<SeriesInfo> {
        if v.get("version").and_then(Value::as_u64) != Some(VERSION) {
            return Err(bad("unknown version"));
        }
        let slices = v
            .get("slices")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no slices"))?
            .iter()
            .map(|s| {
                Ok(SliceRef {
                    file: string(s, "file")?,
                    sop_class_uid: string(s, "sop_class_uid")?,
                    sop_instance_uid: string(s, "sop_instance_uid")?,
                    frame_number: s
                        .get("frame_number")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok()),
                    position: floats(s, "position")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if slices.is_empty() {
            return Err(bad("no slices"));
        }
        let mut identity = InMemDicomObject::new_empty();
        for e in v
            .get("identity")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(tag), Some(vr), Some(text)) = (
                e.get(0).and_then(Value::as_str),
                e.get(1).and_then(Value::as_str),
                e.get(2).and_then(Value::as_str),
            ) else {
                return Err(bad("an identity entry is not [tag, VR, text]"));
            };
            let tag = u32::from_str_radix(tag, 16).map_err(|_| bad(format!("tag {tag:?}")))?;
            let vr = VR::from_str(vr).map_err(|_| bad(format!("VR {vr:?}")))?;
            identity.put(DataElement::new(
                Tag((tag >> 16) as u16, tag as u16),
                vr,
                PrimitiveValue::from(text),
            ));
        }
        let (rows, columns) = (size(v, "rows")?, size(v, "columns")?);
        if rows == 0 || columns == 0 {
            return Err(bad("empty frames"));
        }
        Ok(SeriesInfo {
            series_instance_uid: string(v, "series_instance_uid")?,
            study_instance_uid: string(v, "study_instance_uid")?,
            frame_of_reference_uid: string(v, "frame_of_reference_uid")?,
            slices,
            rows,
            columns,
            orientation: floats(v, "orientation")?,
            pixel_spacing: floats(v, "pixel_spacing")?,
            slice_spacing: v
                .get("slice_spacing")
                .and_then(Value::as_f64)
                .ok_or_else(|| bad("no slice_spacing"))?,
            slice_thickness: v.get("slice_thickness").and_then(Value::as_f64),
            identity,
        })
    }
}
