//! Reading attributes from parsed datasets, including Enhanced multi-frame functional groups.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;

use crate::error::{DicomError, Result};

/// The element's value as one trimmed string (multi-valued strings joined by `\`), or `None`
/// when absent, empty or not text.
pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.get(tag)?;
    let s = e.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0').to_string();
    (!s.is_empty()).then_some(s)
}

/// The element's values as numbers (DS, IS, FD, ...), or `None` when absent, empty or not
/// numeric.
pub(crate) fn numbers(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let v = obj.get(tag)?.to_multi_float64().ok()?;
    (!v.is_empty() && v.iter().all(|x| x.is_finite())).then_some(v)
}

/// The first value as an integer.
pub(crate) fn integer(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

/// The items of a sequence element, or an empty slice.
pub(crate) fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.get(tag).and_then(InMemElement::items).unwrap_or(&[])
}

/// A required attribute as exactly `N` numbers.
pub(crate) fn required_numbers<const N: usize>(
    obj: &InMemDicomObject,
    tag: Tag,
    file: &str,
    attribute: &'static str,
) -> Result<[f64; N]> {
    let missing = || DicomError::MissingAttribute {
        file: file.to_string(),
        attribute,
    };
    let v = numbers(obj, tag).ok_or_else(missing)?;
    v.get(..N)
        .and_then(|s| <[f64; N]>::try_from(s).ok())
        .ok_or_else(missing)
}

/// The geometry and value transform of one frame (a classic single-frame file, or one frame of
/// an Enhanced multi-frame object).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FrameGeometry {
    /// ImagePositionPatient (LPS, mm).
    pub position: [f64; 3],
    /// ImageOrientationPatient: row direction then column direction.
    pub orientation: [f64; 6],
    /// PixelSpacing: between rows, then between columns (mm).
    pub pixel_spacing: [f64; 2],
    /// SliceThickness, when given.
    pub thickness: Option<f64>,
    /// RescaleSlope, RescaleIntercept.
    pub rescale: (f64, f64),
}

fn rescale_of(obj: &InMemDicomObject) -> (f64, f64) {
    let slope = numbers(obj, tags::RESCALE_SLOPE)
        .and_then(|v| v.first().copied())
        .filter(|s| *s != 0.0)
        .unwrap_or(1.0);
    let intercept = numbers(obj, tags::RESCALE_INTERCEPT)
        .and_then(|v| v.first().copied())
        .unwrap_or(0.0);
    (slope, intercept)
}

/// The geometry of a classic single-frame image.
pub(crate) fn classic_geometry(obj: &InMemDicomObject, file: &str) -> Result<FrameGeometry> {
    Ok(FrameGeometry {
        position: required_numbers(
            obj,
            tags::IMAGE_POSITION_PATIENT,
            file,
            "ImagePositionPatient",
        )?,
        orientation: required_numbers(
            obj,
            tags::IMAGE_ORIENTATION_PATIENT,
            file,
            "ImageOrientationPatient",
        )?,
        pixel_spacing: required_numbers(obj, tags::PIXEL_SPACING, file, "PixelSpacing")?,
        thickness: numbers(obj, tags::SLICE_THICKNESS).and_then(|v| v.first().copied()),
        rescale: rescale_of(obj),
    })
}

/// The item of functional group `group` that applies to frame `frame` (0-based): the
/// per-frame one when present, else the shared one.
fn group_item(obj: &InMemDicomObject, frame: usize, group: Tag) -> Option<&InMemDicomObject> {
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .get(frame)
        .and_then(|f| items(f, group).first());
    per_frame.or_else(|| {
        items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
            .first()
            .and_then(|s| items(s, group).first())
    })
}

/// The geometry of frame `frame` (0-based) of an Enhanced multi-frame image, from its
/// functional groups (Plane Position, Plane Orientation, Pixel Measures, Pixel Value
/// Transformation).
pub(crate) fn enhanced_geometry(
    obj: &InMemDicomObject,
    frame: usize,
    file: &str,
) -> Result<FrameGeometry> {
    let missing = |attribute| DicomError::MissingAttribute {
        file: format!("{file} frame {}", frame + 1),
        attribute,
    };
    let pos = group_item(obj, frame, tags::PLANE_POSITION_SEQUENCE)
        .ok_or_else(|| missing("PlanePositionSequence"))?;
    let ori = group_item(obj, frame, tags::PLANE_ORIENTATION_SEQUENCE)
        .ok_or_else(|| missing("PlaneOrientationSequence"))?;
    let meas = group_item(obj, frame, tags::PIXEL_MEASURES_SEQUENCE)
        .ok_or_else(|| missing("PixelMeasuresSequence"))?;
    let rescale = group_item(obj, frame, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE)
        .map(rescale_of)
        .unwrap_or((1.0, 0.0));
    let name = format!("{file} frame {}", frame + 1);
    Ok(FrameGeometry {
        position: required_numbers(
            pos,
            tags::IMAGE_POSITION_PATIENT,
            &name,
            "ImagePositionPatient",
        )?,
        orientation: required_numbers(
            ori,
            tags::IMAGE_ORIENTATION_PATIENT,
            &name,
            "ImageOrientationPatient",
        )?,
        pixel_spacing: required_numbers(meas, tags::PIXEL_SPACING, &name, "PixelSpacing")?,
        thickness: numbers(meas, tags::SLICE_THICKNESS).and_then(|v| v.first().copied()),
        rescale,
    })
}
