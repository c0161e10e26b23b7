//! DICOM SEG reading: a BINARY, FRACTIONAL or LABELMAP Segmentation that lies on an assembled
//! series' grid becomes a label map on that grid, each segment mapped onto a structure of the
//! bundle by its label or its codes.

use std::collections::HashMap;

use dicom_core::value::Value;
use dicom_dictionary_std::{tags, uids};
use dicom_pixeldata::PixelDecoder;

use super::codes::Code;
use super::matching::{code_of, match_segment};
use super::placement::{check_grid, group, Grid};
use super::Structure;
use crate::attrs::{integer, items, text};
use crate::error::{DicomError, Result};
use crate::input::NamedBytes;
use crate::parse::parse;
use crate::series::SeriesInfo;

/// The Label Map Segmentation Storage SOP class (DICOM Supplement 243).
pub const LABEL_MAP_SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.7";

/// How a Segmentation's pixels encode its segments (SegmentationType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentationType {
    /// One bit per pixel, one frame per segment and slice.
    Binary,
    /// 8-bit fractions of MaximumFractionalValue, one frame per segment and slice.
    Fractional,
    /// 8- or 16-bit pixels holding segment numbers, one frame per slice (Supplement 243).
    Labelmap,
}

impl SegmentationType {
    /// The SegmentationType value (`BINARY`, `FRACTIONAL`, `LABELMAP`).
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentationType::Binary => "BINARY",
            SegmentationType::Fractional => "FRACTIONAL",
            SegmentationType::Labelmap => "LABELMAP",
        }
    }
}

/// One segment of a Segmentation that was read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadSegment {
    /// SegmentNumber.
    pub number: u16,
    /// SegmentLabel.
    pub label: String,
    /// SegmentedPropertyTypeCodeSequence, when given.
    pub property_type: Option<Code>,
    /// SegmentedPropertyTypeModifierCodeSequence, when given (left / right).
    pub type_modifier: Option<Code>,
    /// The label value (the bundle's structure) the segment was mapped to; `None` for a
    /// segment that matches no structure, whose voxels are left out of the map.
    pub value: Option<u8>,
    /// How the segment was matched: `label`, `codes`, or `unknown`.
    pub matched_by: &'static str,
    /// Voxels of the segment found in the pixel data.
    pub voxels: usize,
}

/// A Segmentation decoded onto a series' grid.
#[derive(Clone)]
pub struct DecodedSeg {
    /// One label value per voxel (x fastest, the series' slice order, as [`crate::assemble`]
    /// lays out the volume); 0 where no known segment is.
    pub labels: Vec<u8>,
    /// The Segmentation's type.
    pub segmentation_type: SegmentationType,
    /// SOPInstanceUID of the Segmentation.
    pub sop_instance_uid: String,
    /// SeriesInstanceUID of the Segmentation.
    pub series_instance_uid: String,
    /// SeriesDescription of the Segmentation, when given.
    pub series_description: Option<String>,
    /// Every segment described (the LABELMAP background segment excluded), mapped or not.
    pub segments: Vec<ReadSegment>,
    /// Voxels claimed by more than one mapped segment (BINARY and FRACTIONAL may overlap):
    /// the segment with the higher SegmentNumber is kept.
    pub overlapping_voxels: usize,
    /// Frames in the pixel data.
    pub frames: usize,
}

impl std::fmt::Debug for DecodedSeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedSeg")
            .field("labels", &format_args!("[{} voxels]", self.labels.len()))
            .field("segmentation_type", &self.segmentation_type)
            .field("sop_instance_uid", &self.sop_instance_uid)
            .field("segments", &self.segments)
            .field("overlapping_voxels", &self.overlapping_voxels)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl DecodedSeg {
    /// The segments that match no structure of the bundle (left out of [`DecodedSeg::labels`]).
    pub fn unknown(&self) -> impl Iterator<Item = &ReadSegment> {
        self.segments.iter().filter(|s| s.value.is_none())
    }
}

pub(super) fn seg_error(reason: impl Into<String>) -> DicomError {
    DicomError::Corrupt {
        name: "segmentation".into(),
        reason: reason.into(),
    }
}

pub(super) fn mismatch(reason: impl Into<String>) -> DicomError {
    DicomError::SegMismatch(reason.into())
}

/// The frames' pixels as one value per pixel (frame after frame): BINARY bits unpacked to
/// 0/1, 8- and 16-bit samples as they are.
fn frame_values(
    obj: &dicom_object::DefaultDicomObject,
    frames: usize,
    plane: usize,
    bits: i64,
) -> Result<Vec<u16>> {
    let pixel = obj.get(tags::PIXEL_DATA).ok_or(DicomError::NoPixelData {
        name: "segmentation".into(),
    })?;
    let want = frames * plane;
    if let Value::Primitive(p) = pixel.value() {
        // native: frames back to back; BINARY frames are bit-packed without padding between
        // frames, so frame f starts at bit f × rows × columns (dicom-pixeldata 0.10 assumes
        // byte-aligned frames)
        let bytes = p.to_bytes();
        let need = match bits {
            1 => want.div_ceil(8),
            8 => want,
            _ => want * 2,
        };
        if bytes.len() < need {
            return Err(seg_error(format!(
                "pixel data holds {} bytes, {frames} frames of {plane} pixels need {need}",
                bytes.len()
            )));
        }
        return Ok(match bits {
            1 => (0..want)
                .map(|i| u16::from((bytes[i >> 3] >> (i & 7)) & 1))
                .collect(),
            8 => bytes[..want].iter().map(|&b| u16::from(b)).collect(),
            _ => bytes[..need]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        });
    }
    // encapsulated (compressed): each frame decoded by dicom-pixeldata's codecs
    let mut out = Vec::with_capacity(want);
    for f in 0..frames {
        let decoded = obj
            .decode_pixel_data_frame(f as u32)
            .map_err(|e| seg_error(format!("frame {}: {e}", f + 1)))?;
        let data = decoded.data();
        match bits {
            1 => out.extend(data.iter().take(plane).map(|&b| u16::from(b != 0))),
            8 => out.extend(data.iter().take(plane).map(|&b| u16::from(b))),
            _ => out.extend(
                data.chunks_exact(2)
                    .take(plane)
                    .map(|c| u16::from_le_bytes([c[0], c[1]])),
            ),
        }
        if out.len() != (f + 1) * plane {
            return Err(seg_error(format!(
                "frame {} decodes to the wrong size",
                f + 1
            )));
        }
    }
    Ok(out)
}

/// Decodes a DICOM Segmentation (Part 10 bytes) onto the grid of `series` and maps its
/// segments onto `structures` (the bundle's label values and names).
///
/// The Segmentation must share the series' FrameOfReferenceUID, rows and columns,
/// orientation and pixel spacing, and each frame must lie on one of its slices (by its
/// ImagePositionPatient, else by the source instance it references); otherwise
/// [`DicomError::SegMismatch`]. A segment maps onto the structure whose name equals its
/// SegmentLabel (exactly, else ignoring case and punctuation: `"Adrenal gland left"` is
/// `adrenal_gland_left`), else onto the one structure whose SNOMED codes
/// ([`super::codes::codes_for`]) equal its property type and type modifier. Segments that
/// match nothing are reported in [`DecodedSeg::segments`] with `value: None` and left out of
/// the map. Where mapped segments overlap, the higher SegmentNumber wins (counted in
/// [`DecodedSeg::overlapping_voxels`]). FRACTIONAL voxels count from half the
/// MaximumFractionalValue. In a LABELMAP, PixelPaddingValue (default 0) is background and
/// every other pixel value must be a described SegmentNumber.
pub fn read_seg(bytes: &[u8], series: &SeriesInfo, structures: &[Structure]) -> Result<DecodedSeg> {
    // the parser's checks (declared lengths walked first: a SEG from a PACS is untrusted)
    let parsed = parse(&NamedBytes {
        name: "segmentation".into(),
        bytes: bytes.to_vec(),
    })?
    .ok_or_else(|| seg_error("a DICOMDIR, not a segmentation"))?;
    let obj = &parsed.obj;
    let class = text(obj, tags::SOP_CLASS_UID).unwrap_or_default();
    if class != uids::SEGMENTATION_STORAGE && class != LABEL_MAP_SEGMENTATION_STORAGE {
        return Err(DicomError::NotSegmentation(format!(
            "SOP class {class:?}, modality {:?}",
            text(obj, tags::MODALITY).unwrap_or_default()
        )));
    }
    let kind = match text(obj, tags::SEGMENTATION_TYPE).as_deref() {
        Some("BINARY") => SegmentationType::Binary,
        Some("FRACTIONAL") => SegmentationType::Fractional,
        Some("LABELMAP") => SegmentationType::Labelmap,
        other => return Err(seg_error(format!("SegmentationType {other:?}"))),
    };
    let bits = integer(obj, tags::BITS_ALLOCATED).unwrap_or(0);
    let bits_ok = match kind {
        SegmentationType::Binary => bits == 1,
        SegmentationType::Fractional => bits == 8,
        SegmentationType::Labelmap => bits == 8 || bits == 16,
    };
    if !bits_ok {
        return Err(seg_error(format!(
            "{} segmentation with {bits} bits allocated",
            kind.as_str()
        )));
    }
    check_grid(obj, series)?;

    let background = match kind {
        SegmentationType::Labelmap => integer(obj, tags::PIXEL_PADDING_VALUE).unwrap_or(0),
        _ => -1,
    };
    let mut segments = Vec::new();
    let mut index = HashMap::new();
    for item in items(obj, tags::SEGMENT_SEQUENCE) {
        let number = integer(item, tags::SEGMENT_NUMBER)
            .filter(|n| (0..=65535).contains(n))
            .ok_or_else(|| seg_error("a segment without a valid SegmentNumber"))?;
        if number == background {
            continue;
        }
        let label = text(item, tags::SEGMENT_LABEL).unwrap_or_default();
        let property_type = code_of(item, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE);
        let type_modifier = items(item, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE)
            .first()
            .and_then(|t| code_of(t, tags::SEGMENTED_PROPERTY_TYPE_MODIFIER_CODE_SEQUENCE));
        let (value, matched_by) = match_segment(
            &label,
            property_type.as_ref(),
            type_modifier.as_ref(),
            structures,
        );
        if index.insert(number as u16, segments.len()).is_some() {
            return Err(seg_error(format!(
                "SegmentNumber {number} is described twice"
            )));
        }
        segments.push(ReadSegment {
            number: number as u16,
            label,
            property_type,
            type_modifier,
            value,
            matched_by,
            voxels: 0,
        });
    }
    if segments.is_empty() {
        return Err(seg_error("no segment is described"));
    }

    let plane = series.rows * series.columns;
    let depth = series.slices.len();
    let frames = integer(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if !(1..=1 << 24).contains(&frames) {
        return Err(seg_error(format!("NumberOfFrames {frames}")));
    }
    let frames = frames as usize;
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).len();
    if per_frame != frames {
        return Err(seg_error(format!(
            "{per_frame} per-frame functional group items for {frames} frames"
        )));
    }
    let grid = Grid::new(series);
    // frame → (slice, segment index for BINARY/FRACTIONAL)
    let mut placed = Vec::with_capacity(frames);
    for f in 0..frames {
        let k = grid.slice_of(obj, f)?;
        let segment = if kind == SegmentationType::Labelmap {
            None
        } else {
            let number = group(obj, f, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
                .and_then(|g| integer(g, tags::REFERENCED_SEGMENT_NUMBER))
                .ok_or_else(|| DicomError::MissingAttribute {
                    file: format!("segmentation frame {}", f + 1),
                    attribute: "ReferencedSegmentNumber",
                })?;
            let i = u16::try_from(number)
                .ok()
                .and_then(|n| index.get(&n))
                .ok_or_else(|| {
                    seg_error(format!(
                        "frame {} refers to undescribed segment {number}",
                        f + 1
                    ))
                })?;
            Some(*i)
        };
        placed.push((f, k, segment));
    }
    let values = frame_values(obj, frames, plane, bits)?;
    let threshold = match kind {
        SegmentationType::Fractional => {
            let max = integer(obj, tags::MAXIMUM_FRACTIONAL_VALUE)
                .unwrap_or(255)
                .max(1);
            ((max + 1) / 2) as u16
        }
        _ => 1,
    };
    // overlaps: frames applied in segment order, so the higher SegmentNumber wins
    placed.sort_by_key(|&(f, _, s)| (s.map(|i| segments[i].number), f));
    let mut labels = vec![0u8; plane * depth];
    let mut owner = vec![
        0u16;
        if kind == SegmentationType::Labelmap {
            0
        } else {
            plane * depth
        }
    ];
    let mut overlapping = 0usize;
    for &(f, k, segment) in &placed {
        let px = &values[f * plane..(f + 1) * plane];
        let out = &mut labels[k * plane..(k + 1) * plane];
        match segment {
            Some(i) => {
                let seg = &mut segments[i];
                let own = &mut owner[k * plane..(k + 1) * plane];
                for ((o, w), &v) in out.iter_mut().zip(own.iter_mut()).zip(px) {
                    if v >= threshold {
                        seg.voxels += 1;
                        if let Some(value) = seg.value {
                            if *w != 0 && *w != seg.number {
                                overlapping += 1;
                            }
                            *o = value;
                            *w = seg.number;
                        }
                    }
                }
            }
            None => {
                for (o, &v) in out.iter_mut().zip(px) {
                    if i64::from(v) == background {
                        continue;
                    }
                    let i = *index.get(&v).ok_or_else(|| {
                        seg_error(format!(
                            "frame {}: pixel value {v} is no described segment",
                            f + 1
                        ))
                    })?;
                    let seg = &mut segments[i];
                    seg.voxels += 1;
                    if let Some(value) = seg.value {
                        *o = value;
                    }
                }
            }
        }
    }
    Ok(DecodedSeg {
        labels,
        segmentation_type: kind,
        sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        series_instance_uid: text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        series_description: text(obj, tags::SERIES_DESCRIPTION),
        segments,
        overlapping_voxels: overlapping,
        frames,
    })
}
