//! DICOM Segmentation (SEG) writing: a label map on the grid of an assembled series becomes a
//! BINARY Segmentation with one segment per structure present and one frame per non-empty
//! slice of each segment, referencing the source series.

pub mod codes;
mod elements;
mod groups;
mod labelmap;
mod matching;
mod placement;
mod read;
mod sidecar;

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

use crate::error::{DicomError, Result};
use crate::series::SeriesInfo;
use codes::{codes_for, fallback_codes, SegmentCodes};
pub(crate) use elements::new_uid;
use elements::{at, item, s, seq, us};
use groups::{frame_groups, header, referenced_series, segment_item, shared_groups};
pub use labelmap::write_labelmap_seg;
pub use read::{
    read_seg, DecodedSeg, ReadSegment, SegmentationType, LABEL_MAP_SEGMENTATION_STORAGE,
};

/// One structure of the label map: the voxel value and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure {
    /// The label value in the map (1..=255).
    pub value: u8,
    /// The structure's name (the bundle's name, e.g. `liver`), looked up in
    /// [`codes::codes_for`] for its codes and colour.
    pub name: String,
}

/// Descriptive attributes of the written SEG series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegOptions {
    /// SeriesNumber.
    pub series_number: i32,
    /// SeriesDescription.
    pub series_description: String,
    /// SegmentAlgorithmName (and ManufacturerModelName).
    pub algorithm_name: String,
    /// SoftwareVersions.
    pub software_version: String,
    /// SOPInstanceUID and SeriesInstanceUID to use; fresh `2.25.` UIDs when `None`.
    pub uids: Option<(String, String)>,
}

impl Default for SegOptions {
    fn default() -> Self {
        SegOptions {
            series_number: 9901,
            series_description: "ferrolabel segmentation".into(),
            algorithm_name: "ferrolabel wholeBody_ct_segmentation".into(),
            software_version: env!("CARGO_PKG_VERSION").into(),
            uids: None,
        }
    }
}

/// A segment that is present in the label map.
struct Present<'a> {
    number: u16,
    structure: &'a Structure,
    codes: SegmentCodes,
    /// Slices (volume `k`) holding at least one voxel of the segment.
    slices: Vec<usize>,
}

const DCM: &str = "DCM";

/// Writes a BINARY DICOM Segmentation of `labels` (one `u8` per voxel, x fastest, on the
/// series' grid as [`crate::assemble`] built it) and returns the Part 10 file's bytes
/// (Explicit VR Little Endian).
///
/// Segments are numbered from 1 in the order of `structures`, skipping structures absent
/// from the map; each has a frame for every slice where it is present, in slice order, with
/// that slice's ImagePositionPatient and a reference to its source instance. Values in the
/// map that `structures` does not name are ignored. A map with no structure present is
/// refused ([`DicomError::InvalidLabels`]): a SEG needs one segment.
pub fn write_binary_seg(
    series: &SeriesInfo,
    labels: &[u8],
    structures: &[Structure],
    options: &SegOptions,
) -> Result<Vec<u8>> {
    let plane = series.rows * series.columns;
    let present = present_structures(series, labels, structures, false)?;
    let frames: Vec<(Option<u16>, usize)> = present
        .iter()
        .flat_map(|p| p.slices.iter().map(move |&k| (Some(p.number), k)))
        .collect();
    // BINARY pixel data: frames back to back, one bit per pixel, least significant bit first
    let mut pixels = vec![0u8; (frames.len() * plane).div_ceil(8).next_multiple_of(2)];
    let mut bit = 0usize;
    for p in &present {
        for &k in &p.slices {
            let slice = &labels[k * plane..(k + 1) * plane];
            for &v in slice {
                if v == p.structure.value {
                    pixels[bit >> 3] |= 1 << (bit & 7);
                }
                bit += 1;
            }
        }
    }
    let pixels = dicom_core::DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        dicom_core::PrimitiveValue::U8(pixels.into()),
    );
    finish(
        series,
        options,
        SegmentationType::Binary,
        &present,
        &frames,
        pixels,
    )
}

/// Writes a DICOM Segmentation of `labels` of the given type: [`write_binary_seg`] or
/// [`write_labelmap_seg`]; FRACTIONAL is not written ([`DicomError::InvalidLabels`]).
pub fn write_seg(
    kind: SegmentationType,
    series: &SeriesInfo,
    labels: &[u8],
    structures: &[Structure],
    options: &SegOptions,
) -> Result<Vec<u8>> {
    match kind {
        SegmentationType::Binary => write_binary_seg(series, labels, structures, options),
        SegmentationType::Labelmap => write_labelmap_seg(series, labels, structures, options),
        SegmentationType::Fractional => Err(DicomError::InvalidLabels(
            "FRACTIONAL segmentations are not written".into(),
        )),
    }
}

/// The structures present in `labels` with the slices holding each. Segments are numbered
/// from 1 in the order of `structures` or, with `by_value`, by their label value.
fn present_structures<'a>(
    series: &SeriesInfo,
    labels: &[u8],
    structures: &'a [Structure],
    by_value: bool,
) -> Result<Vec<Present<'a>>> {
    let (rows, cols, depth) = (series.rows, series.columns, series.slices.len());
    let plane = rows * cols;
    if labels.len() != plane * depth {
        return Err(DicomError::InvalidLabels(format!(
            "{} labels do not fill the series' {cols} x {rows} x {depth} grid",
            labels.len()
        )));
    }
    let mut seen = [false; 256];
    for st in structures {
        if st.value == 0 || seen[st.value as usize] {
            return Err(DicomError::InvalidLabels(format!(
                "structure {} has value {} (0 or repeated)",
                st.name, st.value
            )));
        }
        seen[st.value as usize] = true;
    }
    // which values occur on which slice
    let mut on_slice = vec![[false; 256]; depth];
    for (k, slice) in labels.chunks_exact(plane).enumerate() {
        for &v in slice {
            on_slice[k][v as usize] = true;
        }
    }
    let mut present = Vec::new();
    for st in structures {
        let slices: Vec<usize> = (0..depth)
            .filter(|&k| on_slice[k][st.value as usize])
            .collect();
        if slices.is_empty() {
            continue;
        }
        let codes = codes_for(&st.name)
            .cloned()
            .unwrap_or_else(|| fallback_codes(&st.name));
        let number = if by_value {
            u16::from(st.value)
        } else {
            present.len() as u16 + 1
        };
        present.push(Present {
            number,
            structure: st,
            codes,
            slices,
        });
    }
    if present.is_empty() {
        return Err(DicomError::InvalidLabels(
            "no structure is present in the label map; a segmentation needs one segment".into(),
        ));
    }
    present.sort_by_key(|p| p.number);
    Ok(present)
}

/// The Segmentation object around `pixels`: `frames` lists each frame's segment (`None` in a
/// LABELMAP) and slice.
fn finish(
    series: &SeriesInfo,
    options: &SegOptions,
    kind: SegmentationType,
    present: &[Present],
    frames: &[(Option<u16>, usize)],
    pixels: dicom_object::mem::InMemElement,
) -> Result<Vec<u8>> {
    let (rows, cols) = (series.rows, series.columns);
    if frames.len() > i32::MAX as usize
        || rows > usize::from(u16::MAX)
        || cols > usize::from(u16::MAX)
    {
        return Err(DicomError::InvalidLabels(format!(
            "{} frames of {cols} x {rows} do not fit a DICOM image",
            frames.len()
        )));
    }
    let (sop_uid, series_uid) = options
        .uids
        .clone()
        .unwrap_or_else(|| (new_uid(), new_uid()));
    let mut obj = header(series, options, &sop_uid, &series_uid);
    obj.put(us(tags::ROWS, &[rows as u16]));
    obj.put(us(tags::COLUMNS, &[cols as u16]));
    obj.put(s(tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string()));
    let mut segments: Vec<InMemDicomObject> = Vec::with_capacity(present.len() + 1);
    if kind == SegmentationType::Labelmap {
        labelmap::set_pixel_module(&mut obj);
        segments.push(labelmap::background_segment(options));
    }
    segments.extend(present.iter().map(|p| segment_item(p, options)));
    obj.put(seq(tags::SEGMENT_SEQUENCE, segments));
    let dim_uid = new_uid();
    obj.put(seq(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![item(vec![s(
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            &dim_uid,
        )])],
    ));
    obj.put(s(tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D"));
    let dim = |pointer, group, label: &str| {
        item(vec![
            s(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_uid),
            at(tags::DIMENSION_INDEX_POINTER, pointer),
            at(tags::FUNCTIONAL_GROUP_POINTER, group),
            s(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    let mut dims = Vec::new();
    if kind != SegmentationType::Labelmap {
        dims.push(dim(
            tags::REFERENCED_SEGMENT_NUMBER,
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            "ReferencedSegmentNumber",
        ));
    }
    dims.push(dim(
        tags::IMAGE_POSITION_PATIENT,
        tags::PLANE_POSITION_SEQUENCE,
        "ImagePositionPatient",
    ));
    obj.put(seq(tags::DIMENSION_INDEX_SEQUENCE, dims));
    obj.put(seq(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(series)],
    ));
    let per_frame = frames
        .iter()
        .map(|&(segment, k)| frame_groups(series, segment, k))
        .collect();
    obj.put(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
    obj.put(referenced_series(series));
    obj.put(pixels);

    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    let mut out = Vec::new();
    file.write_all(&mut out)
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    Ok(out)
}
