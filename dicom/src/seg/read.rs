//! DICOM SEG reading: a BINARY, FRACTIONAL or LABELMAP Segmentation that lies on an assembled
//! series' grid becomes a label map on that grid, each segment mapped onto a structure of the
//! bundle by its label or its codes.

use std::collections::HashMap;

use dicom_core::value::Value;
use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;

use super::codes::{codes_for, Code};
use super::Structure;
use crate::attrs::{integer, items, numbers, text};
use crate::error::{DicomError, Result};
use crate::geometry::{cross, dot};
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

fn seg_error(reason: impl Into<String>) -> DicomError {
    DicomError::Corrupt {
        name: "segmentation".into(),
        reason: reason.into(),
    }
}

fn mismatch(reason: impl Into<String>) -> DicomError {
    DicomError::SegMismatch(reason.into())
}

fn code_of(obj: &InMemDicomObject, tag: Tag) -> Option<Code> {
    let item = items(obj, tag).first()?;
    Some(Code {
        scheme: text(item, tags::CODING_SCHEME_DESIGNATOR).unwrap_or_default(),
        value: text(item, tags::CODE_VALUE)
            .or_else(|| text(item, tags::LONG_CODE_VALUE))
            .or_else(|| text(item, tags::URN_CODE_VALUE))?,
        meaning: text(item, tags::CODE_MEANING).unwrap_or_default(),
    })
}

/// Lower case, runs of anything but letters and digits as one `_`, trimmed of `_`:
/// `"Adrenal gland, left"` → `adrenal_gland_left`.
fn normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

fn same_code(a: Option<&Code>, b: Option<&Code>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.value == b.value && a.scheme.eq_ignore_ascii_case(&b.scheme),
        _ => false,
    }
}

/// Maps a segment onto a structure: its SegmentLabel equal to a structure's name (exactly,
/// else after [`normalise`]), else its property type and type modifier codes equal to those
/// of exactly one structure in the SNOMED mapping.
fn match_segment(
    label: &str,
    property_type: Option<&Code>,
    modifier: Option<&Code>,
    structures: &[Structure],
) -> (Option<u8>, &'static str) {
    if let Some(st) = structures.iter().find(|s| s.name == label) {
        return (Some(st.value), "label");
    }
    let wanted = normalise(label);
    if !wanted.is_empty() {
        if let Some(st) = structures.iter().find(|s| normalise(&s.name) == wanted) {
            return (Some(st.value), "label");
        }
    }
    if let Some(pt) = property_type {
        let hits: Vec<u8> = structures
            .iter()
            .filter(|s| {
                codes_for(&s.name).is_some_and(|c| {
                    same_code(Some(&c.property_type), Some(pt))
                        && same_code(c.type_modifier.as_ref(), modifier)
                })
            })
            .map(|s| s.value)
            .collect();
        if let [value] = hits[..] {
            return (Some(value), "codes");
        }
    }
    (None, "unknown")
}

/// The item of functional group `group` for frame `frame`: per-frame, else shared.
fn group(obj: &InMemDicomObject, frame: usize, group: Tag) -> Option<&InMemDicomObject> {
    items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .get(frame)
        .and_then(|f| items(f, group).first())
        .or_else(|| {
            items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
                .first()
                .and_then(|s| items(s, group).first())
        })
}

/// Where frames land on the series: slice positions along the normal and each source
/// instance (and frame) → slice.
struct Grid<'a> {
    series: &'a SeriesInfo,
    normal: [f64; 3],
    /// `(position · normal, k)` sorted by the first.
    along: Vec<(f64, usize)>,
    by_instance: HashMap<(&'a str, Option<u32>), usize>,
    tolerance: f64,
}

impl<'a> Grid<'a> {
    fn new(series: &'a SeriesInfo) -> Grid<'a> {
        let o = series.orientation;
        let normal = cross([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        let mut along: Vec<(f64, usize)> = series
            .slices
            .iter()
            .enumerate()
            .map(|(k, s)| (dot(s.position, normal), k))
            .collect();
        along.sort_by(|a, b| a.0.total_cmp(&b.0));
        let by_instance = series
            .slices
            .iter()
            .enumerate()
            .map(|(k, s)| ((s.sop_instance_uid.as_str(), s.frame_number), k))
            .collect();
        let finest = series.pixel_spacing[0]
            .min(series.pixel_spacing[1])
            .min(series.slice_spacing);
        Grid {
            series,
            normal,
            along,
            by_instance,
            tolerance: (0.05 * finest).max(0.01),
        }
    }

    /// The slice at ImagePositionPatient `p`, which must coincide with a slice's position.
    fn slice_at(&self, p: [f64; 3], frame: usize) -> Result<usize> {
        let s = dot(p, self.normal);
        let i = self.along.partition_point(|(x, _)| *x < s);
        let candidates = [i.checked_sub(1), Some(i)];
        let best = candidates
            .iter()
            .flatten()
            .filter_map(|&i| self.along.get(i))
            .map(|&(_, k)| {
                let q = self.series.slices[k].position;
                let d =
                    ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt();
                (d, k)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((d, k)) if d <= self.tolerance => Ok(k),
            Some((d, _)) => Err(mismatch(format!(
                "frame {} at ImagePositionPatient {p:?} lies on no slice of the series \
                 (the nearest is {d:.3} mm away)",
                frame + 1
            ))),
            None => Err(mismatch("the series has no slice")),
        }
    }

    /// The slice of frame `frame`: by its PlanePositionSequence, else by the source instance
    /// its DerivationImageSequence references.
    fn slice_of(&self, obj: &InMemDicomObject, frame: usize) -> Result<usize> {
        if let Some(pos) = group(obj, frame, tags::PLANE_POSITION_SEQUENCE) {
            let p = numbers(pos, tags::IMAGE_POSITION_PATIENT)
                .filter(|v| v.len() >= 3)
                .ok_or_else(|| {
                    seg_error(format!("frame {}: bad ImagePositionPatient", frame + 1))
                })?;
            return self.slice_at([p[0], p[1], p[2]], frame);
        }
        let source = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .get(frame)
            .and_then(|f| items(f, tags::DERIVATION_IMAGE_SEQUENCE).first())
            .and_then(|d| items(d, tags::SOURCE_IMAGE_SEQUENCE).first())
            .ok_or_else(|| DicomError::MissingAttribute {
                file: format!("segmentation frame {}", frame + 1),
                attribute: "PlanePositionSequence or SourceImageSequence",
            })?;
        let uid = text(source, tags::REFERENCED_SOP_INSTANCE_UID).unwrap_or_default();
        let number = integer(source, tags::REFERENCED_FRAME_NUMBER).map(|n| n as u32);
        self.by_instance
            .get(&(uid.as_str(), number))
            .or_else(|| self.by_instance.get(&(uid.as_str(), None)))
            .copied()
            .ok_or_else(|| {
                mismatch(format!(
                    "frame {} references instance {uid} (frame {number:?}), which is not in \
                     the series",
                    frame + 1
                ))
            })
    }
}

/// Checks that the Segmentation's grid is the series': frame of reference, rows and columns,
/// orientation and pixel spacing.
fn check_grid(obj: &InMemDicomObject, series: &SeriesInfo) -> Result<()> {
    let frame_of_reference =
        text(obj, tags::FRAME_OF_REFERENCE_UID).ok_or(DicomError::MissingAttribute {
            file: "segmentation".into(),
            attribute: "FrameOfReferenceUID",
        })?;
    if frame_of_reference != series.frame_of_reference_uid {
        return Err(mismatch(format!(
            "its FrameOfReferenceUID {frame_of_reference} is not the series' {}",
            series.frame_of_reference_uid
        )));
    }
    let (rows, cols) = (
        integer(obj, tags::ROWS).unwrap_or(0),
        integer(obj, tags::COLUMNS).unwrap_or(0),
    );
    if rows != series.rows as i64 || cols != series.columns as i64 {
        return Err(mismatch(format!(
            "its frames are {cols} x {rows}, the series' slices {} x {}",
            series.columns, series.rows
        )));
    }
    if let Some(o) = group(obj, 0, tags::PLANE_ORIENTATION_SEQUENCE)
        .and_then(|g| numbers(g, tags::IMAGE_ORIENTATION_PATIENT))
    {
        if o.len() < 6
            || o.iter()
                .zip(&series.orientation)
                .any(|(a, b)| (a - b).abs() > 1e-3)
        {
            return Err(mismatch(format!(
                "its ImageOrientationPatient {o:?} is not the series' {:?}",
                series.orientation
            )));
        }
    }
    if let Some(s) =
        group(obj, 0, tags::PIXEL_MEASURES_SEQUENCE).and_then(|g| numbers(g, tags::PIXEL_SPACING))
    {
        let off = |a: f64, b: f64| (a - b).abs() > 1e-3 * b.abs().max(1e-3);
        if s.len() < 2 || off(s[0], series.pixel_spacing[0]) || off(s[1], series.pixel_spacing[1]) {
            return Err(mismatch(format!(
                "its PixelSpacing {s:?} is not the series' {:?}",
                series.pixel_spacing
            )));
        }
    }
    Ok(())
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
    let is_part10 = bytes.starts_with(b"DICM") || bytes.get(128..132) == Some(&b"DICM"[..]);
    if !is_part10 {
        return Err(DicomError::NotDicom {
            name: "segmentation".into(),
            reason: "no DICM magic at byte 128 (not a DICOM Part 10 file)".into(),
        });
    }
    let parsed = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .from_reader(bytes)
        .map_err(|e| seg_error(e.to_string()))?;
    let obj = &parsed;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn st(value: u8, name: &str) -> Structure {
        Structure {
            value,
            name: name.into(),
        }
    }

    #[test]
    fn segments_match_by_label_then_codes() {
        let bundle = [st(1, "spleen"), st(3, "kidney_left"), st(2, "kidney_right")];
        assert_eq!(
            match_segment("spleen", None, None, &bundle),
            (Some(1), "label")
        );
        assert_eq!(
            match_segment("Kidney, Left", None, None, &bundle),
            (Some(3), "label")
        );
        let kidney = codes_for("kidney_left").unwrap();
        let (v, by) = match_segment(
            "Niere links",
            Some(&kidney.property_type),
            kidney.type_modifier.as_ref(),
            &bundle,
        );
        assert_eq!((v, by), (Some(3), "codes"));
        // the type without the modifier matches neither kidney
        assert_eq!(
            match_segment("Niere", Some(&kidney.property_type), None, &bundle),
            (None, "unknown")
        );
        assert_eq!(normalise("  Adrenal gland -- left "), "adrenal_gland_left");
    }
}
