//! The attributes of a written Segmentation: header modules, segment descriptions and the
//! shared and per-frame functional groups.

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::codes::{rgb_to_dicom_lab, Code};
use super::elements::{code_item, code_seq, ds, ds_multi, item, s, seq, strs, ul, us};
use super::{Present, SegOptions, DCM};
use crate::series::SeriesInfo;

/// Patient, study, series, equipment, image and pixel-description attributes.
pub(super) fn header(
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

pub(super) fn segment_item(p: &Present, options: &SegOptions) -> InMemDicomObject {
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

pub(super) fn shared_groups(series: &SeriesInfo) -> InMemDicomObject {
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

pub(super) fn frame_groups(
    series: &SeriesInfo,
    segment: Option<u16>,
    k: usize,
) -> InMemDicomObject {
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
pub(super) fn referenced_series(series: &SeriesInfo) -> dicom_object::mem::InMemElement {
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
