//! Series assembly: group the upload's images by SeriesInstanceUID, collect every frame's
//! geometry, stack the frames along the slice normal and decode them into one [`Volume`].

use std::collections::BTreeMap;

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, Rescale};
use ferrolabel_imaging::{Limits, Volume};

use crate::attrs::{classic_geometry, enhanced_geometry, integer, text, FrameGeometry};
use crate::error::{DicomError, Result};
use crate::geometry::{frame_axes, ras_affine, stack, GeometryTolerance};
use crate::input::{check_files, InputLimits, NamedBytes};
use crate::parse::{check_image, parse, sop_class_uid, sop_instance_uid, Parsed};

/// How to assemble an upload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssembleOptions {
    /// Bounds on the upload (file count, bytes, zip ratio).
    pub input: InputLimits,
    /// Bounds on the assembled volume (voxel count).
    pub image: Limits,
    /// The SeriesInstanceUID to assemble when the upload holds several series.
    pub series_uid: Option<String>,
    /// Geometry tolerances.
    pub tolerance: GeometryTolerance,
}

/// One frame of the assembled volume (slice `k` of the volume is `slices[k]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SliceRef {
    /// The file it came from (name in the upload).
    pub file: String,
    /// SOPClassUID of the source instance.
    pub sop_class_uid: String,
    /// SOPInstanceUID of the source instance.
    pub sop_instance_uid: String,
    /// 1-based frame number for multi-frame sources, `None` for single-frame images.
    pub frame_number: Option<u32>,
    /// ImagePositionPatient (LPS, mm).
    pub position: [f64; 3],
}

/// What a DICOM SEG (or any derived object) needs to know about its source series.
#[derive(Debug, Clone)]
pub struct SeriesInfo {
    /// SeriesInstanceUID (a fresh UID when the source's is empty, as anonymisers leave it).
    pub series_instance_uid: String,
    /// StudyInstanceUID (a fresh UID when the source's is empty).
    pub study_instance_uid: String,
    /// FrameOfReferenceUID (a fresh UID when the source's is empty).
    pub frame_of_reference_uid: String,
    /// The source frames in volume order.
    pub slices: Vec<SliceRef>,
    /// Rows and columns of every frame.
    pub rows: usize,
    /// Columns of every frame.
    pub columns: usize,
    /// ImageOrientationPatient shared by every frame.
    pub orientation: [f64; 6],
    /// PixelSpacing (between rows, between columns), mm.
    pub pixel_spacing: [f64; 2],
    /// Distance between neighbouring slices along the normal, mm.
    pub slice_spacing: f64,
    /// SliceThickness of the first frame, when given.
    pub slice_thickness: Option<f64>,
    /// Patient, study and character-set attributes of the first image, copied into derived
    /// objects.
    pub identity: InMemDicomObject,
}

/// An assembled series: the volume (rescaled values, RAS+ affine) and its provenance.
#[derive(Debug, Clone)]
pub struct Series {
    /// The voxels, `f32` after RescaleSlope/RescaleIntercept, on the RAS+ grid.
    pub volume: Volume,
    /// Source identity and per-slice references.
    pub info: SeriesInfo,
}

/// Attributes copied from the source into derived objects (Patient, General Study, Patient
/// Study modules, and the character set they are encoded in).
const IDENTITY_TAGS: &[dicom_core::Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::PATIENT_WEIGHT,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_DESCRIPTION,
];

/// One frame to place: which parsed object, which frame, where.
struct Frame {
    obj: usize,
    frame: u32,
    geometry: FrameGeometry,
    name: String,
}

fn frames_of(p: &Parsed, index: usize) -> Result<Vec<Frame>> {
    let count = integer(&p.obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    let enhanced = p
        .obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .is_some()
        || p.obj.get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).is_some();
    if !enhanced {
        if count != 1 {
            return Err(DicomError::UnsupportedImage(format!(
                "{}: {count} frames without functional groups",
                p.name
            )));
        }
        return Ok(vec![Frame {
            obj: index,
            frame: 0,
            geometry: classic_geometry(&p.obj, &p.name)?,
            name: p.name.clone(),
        }]);
    }
    if !(1..=65536).contains(&count) {
        return Err(DicomError::UnsupportedImage(format!(
            "{}: NumberOfFrames {count}",
            p.name
        )));
    }
    (0..count as usize)
        .map(|f| {
            Ok(Frame {
                obj: index,
                frame: f as u32,
                geometry: enhanced_geometry(&p.obj, f, &p.name)?,
                name: format!("{} frame {}", p.name, f + 1),
            })
        })
        .collect()
}

/// Parses every file and keeps the chosen series (the only one, or `series_uid`).
fn choose_series(files: &[NamedBytes], series_uid: Option<&str>) -> Result<Vec<Parsed>> {
    let mut by_series: BTreeMap<String, Vec<Parsed>> = BTreeMap::new();
    for f in files {
        let Some(p) = parse(f)? else { continue };
        // an anonymised series may have an empty SeriesInstanceUID: its files group together
        let uid = text(&p.obj, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        by_series.entry(uid).or_default().push(p);
    }
    if by_series.is_empty() {
        return Err(DicomError::Empty);
    }
    match series_uid {
        Some(uid) => by_series
            .remove(uid)
            .ok_or_else(|| DicomError::SeriesNotFound(uid.to_string())),
        None if by_series.len() == 1 => Ok(by_series.into_values().next().unwrap_or_default()),
        None => Err(DicomError::MultipleSeries {
            uids: by_series
                .into_keys()
                .map(|u| {
                    if u.is_empty() {
                        "(no SeriesInstanceUID)".into()
                    } else {
                        u
                    }
                })
                .collect(),
        }),
    }
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

/// Assembles one CT series from the files of an upload (see the crate docs for what is
/// checked and refused).
pub fn assemble(files: &[NamedBytes], options: &AssembleOptions) -> Result<Series> {
    check_files(files, &options.input)?;
    let parsed = choose_series(files, options.series_uid.as_deref())?;
    for p in &parsed {
        check_image(p)?;
    }
    let mut frames = Vec::new();
    for (i, p) in parsed.iter().enumerate() {
        frames.extend(frames_of(p, i)?);
    }
    let first = &frames[0];
    let rows = integer(&parsed[first.obj].obj, tags::ROWS).unwrap_or(0);
    let columns = integer(&parsed[first.obj].obj, tags::COLUMNS).unwrap_or(0);
    if rows <= 0 || columns <= 0 {
        return Err(DicomError::MissingAttribute {
            file: first.name.clone(),
            attribute: "Rows/Columns",
        });
    }
    let tol = options.tolerance;
    let g0 = first.geometry.clone();
    for f in &frames {
        let p = &parsed[f.obj].obj;
        if integer(p, tags::ROWS) != Some(rows) || integer(p, tags::COLUMNS) != Some(columns) {
            return Err(DicomError::Inconsistent(format!(
                "{} is not {columns} x {rows} like {}",
                f.name, first.name
            )));
        }
        if !close(&f.geometry.orientation, &g0.orientation, tol.orientation) {
            return Err(DicomError::Inconsistent(format!(
                "{} has ImageOrientationPatient {:?}, {} has {:?}",
                f.name, f.geometry.orientation, first.name, g0.orientation
            )));
        }
        if !close(&f.geometry.pixel_spacing, &g0.pixel_spacing, 1e-4) {
            return Err(DicomError::Inconsistent(format!(
                "{} has PixelSpacing {:?}, {} has {:?}",
                f.name, f.geometry.pixel_spacing, first.name, g0.pixel_spacing
            )));
        }
    }
    let axes = frame_axes(&g0.orientation, tol.orientation, &first.name)?;
    let positions: Vec<_> = frames.iter().map(|f| f.geometry.position).collect();
    let names: Vec<_> = frames.iter().map(|f| f.name.clone()).collect();
    let st = stack(&positions, axes[2], &names, &tol)?;
    let (rows, columns) = (rows as usize, columns as usize);
    let dims = [columns, rows, frames.len()];
    options.image.check_voxels(dims)?;
    let slice_spacing = st
        .spacing
        .or(g0.thickness)
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    let origin = frames[st.order[0]].geometry.position;
    let affine = ras_affine(&axes, g0.pixel_spacing, slice_spacing, origin);

    let plane = rows * columns;
    let mut data = Vec::with_capacity(plane * frames.len());
    let mut slices = Vec::with_capacity(frames.len());
    for &i in &st.order {
        let f = &frames[i];
        let p = &parsed[f.obj];
        data.extend(decode_frame(p, f)?);
        if data.len() % plane != 0 {
            return Err(DicomError::Corrupt {
                name: f.name.clone(),
                reason: "decoded frame has the wrong number of pixels".into(),
            });
        }
        let multi = integer(&p.obj, tags::NUMBER_OF_FRAMES).unwrap_or(1) > 1
            || p.obj
                .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
                .is_some();
        slices.push(SliceRef {
            file: p.name.clone(),
            sop_class_uid: sop_class_uid(p),
            sop_instance_uid: sop_instance_uid(p),
            frame_number: multi.then_some(f.frame + 1),
            position: f.geometry.position,
        });
    }
    let head = &parsed[first.obj].obj;
    let mut identity = InMemDicomObject::new_empty();
    for tag in IDENTITY_TAGS {
        if let Some(e) = head.get(*tag) {
            identity.put(e.clone());
        }
    }
    // anonymised sources may lack these; derived objects then get fresh UIDs in their place
    let or_new = |tag| text(head, tag).unwrap_or_else(crate::seg::new_uid);
    let info = SeriesInfo {
        series_instance_uid: or_new(tags::SERIES_INSTANCE_UID),
        study_instance_uid: or_new(tags::STUDY_INSTANCE_UID),
        frame_of_reference_uid: or_new(tags::FRAME_OF_REFERENCE_UID),
        slices,
        rows,
        columns,
        orientation: g0.orientation,
        pixel_spacing: g0.pixel_spacing,
        slice_spacing,
        slice_thickness: g0.thickness,
        identity,
    };
    let volume = Volume::new(dims, data, affine)?;
    Ok(Series { volume, info })
}

/// Decodes one frame and applies its rescale, through dicom-pixeldata's codecs and modality
/// LUT (which honours BitsStored and PixelRepresentation).
fn decode_frame(p: &Parsed, f: &Frame) -> Result<Vec<f32>> {
    let corrupt = |e: dicom_pixeldata::Error| DicomError::Corrupt {
        name: f.name.clone(),
        reason: e.to_string(),
    };
    let decoded = p.obj.decode_pixel_data_frame(f.frame).map_err(corrupt)?;
    let (slope, intercept) = f.geometry.rescale;
    let opts = ConvertOptions::new()
        .with_modality_lut(ModalityLutOption::Override(Rescale::new(slope, intercept)));
    let px: Vec<f32> = decoded
        .to_vec_frame_with_options(0, &opts)
        .map_err(corrupt)?;
    let want = decoded.rows() as usize * decoded.columns() as usize;
    if px.len() != want {
        return Err(DicomError::Corrupt {
            name: f.name.clone(),
            reason: format!("decoded {} pixels, expected {want}", px.len()),
        });
    }
    Ok(px)
}
