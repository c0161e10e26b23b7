//! LABELMAP Segmentations (DICOM Supplement 243, Label Map Segmentation Storage): one 8-bit
//! frame per slice whose pixel values are segment numbers, with segment 0 the background
//! (PixelPaddingValue 0).

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::codes::Code;
use super::elements::{code_seq, item, s, us};
use super::read::{SegmentationType, LABEL_MAP_SEGMENTATION_STORAGE};
use super::{finish, present_structures, SegOptions, Structure, DCM};
use crate::error::Result;
use crate::series::SeriesInfo;

/// Writes a LABELMAP DICOM Segmentation of `labels` (one `u8` per voxel, x fastest, on the
/// series' grid) and returns the Part 10 file's bytes (Explicit VR Little Endian).
///
/// Every slice is one frame (8 bits per pixel). A structure present in the map is the segment
/// whose SegmentNumber is its label value, so a pixel holds the map's value where `structures`
/// names it and 0 (the background segment, PixelPaddingValue) elsewhere — values the list
/// does not name become background. Segments carry the same labels, codes and colours as
/// [`super::write_binary_seg`]'s; a map with no structure present is refused.
pub fn write_labelmap_seg(
    series: &SeriesInfo,
    labels: &[u8],
    structures: &[Structure],
    options: &SegOptions,
) -> Result<Vec<u8>> {
    let present = present_structures(series, labels, structures, true)?;
    let mut named = [false; 256];
    for p in &present {
        named[p.structure.value as usize] = true;
    }
    let mut pixels: Vec<u8> = labels
        .iter()
        .map(|&v| if named[v as usize] { v } else { 0 })
        .collect();
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    let frames: Vec<(Option<u16>, usize)> = (0..series.slices.len()).map(|k| (None, k)).collect();
    let pixels = dicom_core::DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        dicom_core::PrimitiveValue::U8(pixels.into()),
    );
    finish(
        series,
        options,
        SegmentationType::Labelmap,
        &present,
        &frames,
        pixels,
    )
}

/// Overrides the BINARY header's SOP class and pixel description with a LABELMAP's.
pub(super) fn set_pixel_module(obj: &mut InMemDicomObject) {
    for e in [
        s(tags::SOP_CLASS_UID, VR::UI, LABEL_MAP_SEGMENTATION_STORAGE),
        s(tags::SEGMENTATION_TYPE, VR::CS, "LABELMAP"),
        us(tags::BITS_ALLOCATED, &[8]),
        us(tags::BITS_STORED, &[8]),
        us(tags::HIGH_BIT, &[7]),
        us(tags::PIXEL_PADDING_VALUE, &[0]),
    ] {
        obj.put(e);
    }
}

/// Segment 0: the background (DCM 125040 "Background").
pub(super) fn background_segment(options: &SegOptions) -> InMemDicomObject {
    let background = Code {
        scheme: DCM.into(),
        value: "125040".into(),
        meaning: "Background".into(),
    };
    item(vec![
        us(tags::SEGMENT_NUMBER, &[0]),
        s(tags::SEGMENT_LABEL, VR::LO, "Background"),
        s(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
        s(
            tags::SEGMENT_ALGORITHM_NAME,
            VR::LO,
            &options.algorithm_name,
        ),
        code_seq(tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, &background),
        code_seq(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, &background),
        us(tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE, &[0, 32896, 32896]),
    ])
}
