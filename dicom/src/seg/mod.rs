//! DICOM Segmentation (SEG) writing: a label map on the grid of an assembled series becomes a
//! BINARY Segmentation with one segment per structure present and one frame per non-empty
//! slice of each segment, referencing the source series.

pub mod codes;
mod elements;
mod labelmap;
mod read;
mod sidecar;

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

use crate::error::{DicomError, Result};
use crate::series::SeriesInfo;
use codes::{codes_for, fallback_codes, rgb_to_dicom_lab, Code, SegmentCodes};
pub(crate) use elements::new_uid;
use elements::{at, code_item, code_seq, ds, ds_multi, item, s, seq, strs, ul, us};
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

/// Patient, study, series, equipment, image and pixel-description attributes.
fn header(
    series: &SeriesInfo,
    options: &SegOptions,
    sop_uid: &str,
    series_uid: &str,
) -> InMemDicomObject {
    let mut obj = series.identity.clone();
    // type 2 attributes of the Patient and General Study modules: present, maybe empty
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ] {
        if obj.get(tag).is_none() {
            obj.put(s(tag, vr, ""));
        }
    }
    obj.put(s(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &series.study_instance_uid,
    ));
    let now = chrono::Utc::now();
    let date = now.format("%Y%m%d").to_string();
    let time = now.format("%H%M%S").to_string();
    for e in [
        s(tags::SOP_CLASS_UID, VR::UI, uids::SEGMENTATION_STORAGE),
        s(tags::SOP_INSTANCE_UID, VR::UI, sop_uid),
        s(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
        s(tags::MODALITY, VR::CS, "SEG"),
        s(
            tags::SERIES_NUMBER,
            VR::IS,
            &options.series_number.to_string(),
        ),
        s(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            &options.series_description,
        ),
        s(tags::SERIES_DATE, VR::DA, &date),
        s(tags::SERIES_TIME, VR::TM, &time),
        s(tags::INSTANCE_NUMBER, VR::IS, "1"),
        s(tags::CONTENT_DATE, VR::DA, &date),
        s(tags::CONTENT_TIME, VR::TM, &time),
        s(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            &series.frame_of_reference_uid,
        ),
        s(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        s(tags::MANUFACTURER, VR::LO, "ferrolabel"),
        s(
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            &options.algorithm_name,
        ),
        s(tags::DEVICE_SERIAL_NUMBER, VR::LO, "1"),
        s(tags::SOFTWARE_VERSIONS, VR::LO, &options.software_version),
        strs(
            tags::IMAGE_TYPE,
            VR::CS,
            &["DERIVED".into(), "PRIMARY".into()],
        ),
        s(tags::CONTENT_LABEL, VR::CS, "SEGMENTATION"),
        s(
            tags::CONTENT_DESCRIPTION,
            VR::LO,
            &options.series_description,
        ),
        s(tags::CONTENT_CREATOR_NAME, VR::PN, ""),
        us(tags::SAMPLES_PER_PIXEL, &[1]),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::BITS_ALLOCATED, &[1]),
        us(tags::BITS_STORED, &[1]),
        us(tags::HIGH_BIT, &[0]),
        us(tags::PIXEL_REPRESENTATION, &[0]),
        s(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        s(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        s(tags::SEGMENTS_OVERLAP, VR::CS, "NO"),
    ] {
        obj.put(e);
    }
    obj
}

fn segment_item(p: &Present, options: &SegOptions) -> InMemDicomObject {
    let c = &p.codes;
    let mut type_extra = Vec::new();
    if let Some(m) = &c.type_modifier {
        type_extra.push(code_seq(
            tags::SEGMENTED_PROPERTY_TYPE_MODIFIER_CODE_SEQUENCE,
            m,
        ));
    }
    let mut elements = vec![
        us(tags::SEGMENT_NUMBER, &[p.number]),
        s(tags::SEGMENT_LABEL, VR::LO, &p.structure.name),
        s(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
        s(
            tags::SEGMENT_ALGORITHM_NAME,
            VR::LO,
            &options.algorithm_name,
        ),
        code_seq(tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, &c.category),
        seq(
            tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
            vec![code_item(&c.property_type, type_extra)],
        ),
        us(
            tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
            &rgb_to_dicom_lab(c.rgb),
        ),
    ];
    if let Some(region) = &c.region {
        let mut extra = Vec::new();
        if let Some(m) = &c.region_modifier {
            extra.push(code_seq(tags::ANATOMIC_REGION_MODIFIER_SEQUENCE, m));
        }
        elements.push(seq(
            tags::ANATOMIC_REGION_SEQUENCE,
            vec![code_item(region, extra)],
        ));
    }
    item(elements)
}

fn shared_groups(series: &SeriesInfo) -> InMemDicomObject {
    let mut measures = vec![
        ds_multi(tags::PIXEL_SPACING, &series.pixel_spacing),
        s(
            tags::SLICE_THICKNESS,
            VR::DS,
            &ds(series.slice_thickness.unwrap_or(series.slice_spacing)),
        ),
    ];
    if series.slices.len() > 1 {
        measures.push(s(
            tags::SPACING_BETWEEN_SLICES,
            VR::DS,
            &ds(series.slice_spacing),
        ));
    }
    item(vec![
        seq(tags::PIXEL_MEASURES_SEQUENCE, vec![item(measures)]),
        seq(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(vec![ds_multi(
                tags::IMAGE_ORIENTATION_PATIENT,
                &series.orientation,
            )])],
        ),
    ])
}

fn frame_groups(series: &SeriesInfo, segment: Option<u16>, k: usize) -> InMemDicomObject {
    let src = &series.slices[k];
    let mut source = vec![
        s(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &src.sop_class_uid),
        s(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            &src.sop_instance_uid,
        ),
    ];
    if let Some(f) = src.frame_number {
        source.push(s(tags::REFERENCED_FRAME_NUMBER, VR::IS, &f.to_string()));
    }
    source.push(s(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"));
    source.push(code_seq(
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        &Code {
            scheme: DCM.into(),
            value: "121322".into(),
            meaning: "Source image for image processing operation".into(),
        },
    ));
    let derivation = item(vec![
        seq(tags::SOURCE_IMAGE_SEQUENCE, vec![item(source)]),
        code_seq(
            tags::DERIVATION_CODE_SEQUENCE,
            &Code {
                scheme: DCM.into(),
                value: "113076".into(),
                meaning: "Segmentation".into(),
            },
        ),
    ]);
    let index: Vec<u32> = match segment {
        Some(n) => vec![u32::from(n), k as u32 + 1],
        None => vec![k as u32 + 1],
    };
    let mut groups = vec![
        seq(tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]),
        seq(
            tags::FRAME_CONTENT_SEQUENCE,
            vec![item(vec![ul(tags::DIMENSION_INDEX_VALUES, &index)])],
        ),
        seq(
            tags::PLANE_POSITION_SEQUENCE,
            vec![item(vec![ds_multi(
                tags::IMAGE_POSITION_PATIENT,
                &src.position,
            )])],
        ),
    ];
    if let Some(n) = segment {
        groups.push(seq(
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            vec![item(vec![us(tags::REFERENCED_SEGMENT_NUMBER, &[n])])],
        ));
    }
    item(groups)
}

/// ReferencedSeriesSequence (Common Instance Reference module): every source instance once.
fn referenced_series(series: &SeriesInfo) -> dicom_object::mem::InMemElement {
    let mut seen = std::collections::HashSet::new();
    let instances = series
        .slices
        .iter()
        .filter(|s| seen.insert(s.sop_instance_uid.clone()))
        .map(|src| {
            item(vec![
                s(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &src.sop_class_uid),
                s(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &src.sop_instance_uid,
                ),
            ])
        })
        .collect();
    seq(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![item(vec![
            s(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                &series.series_instance_uid,
            ),
            seq(tags::REFERENCED_INSTANCE_SEQUENCE, instances),
        ])],
    )
}
