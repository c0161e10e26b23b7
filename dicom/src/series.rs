//! Series assembly: group the upload's images by SeriesInstanceUID, collect every frame's
//! geometry, stack the frames along the slice normal and decode them into one [`Volume`].

use std::collections::BTreeMap;

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::{
    ConvertOptions, Lut, ModalityLutOption, PixelDecoder, PixelRepresentation, Rescale,
};
use ferrolabel_imaging::{Limits, Volume};

use crate::attrs::{classic_geometry, enhanced_geometry, integer, text, FrameGeometry};
use crate::error::{DicomError, Result};
use crate::geometry::{frame_axes, ras_affine, stack, GeometryTolerance};
use crate::input::{check_files, check_paths, InputLimits, NamedBytes, NamedPath};
use crate::parse::{
    check_image, open_pixels, parse_header, parse_header_bytes, sop_class_uid, sop_instance_uid,
    Parsed,
};

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

fn frames_of(p: &Parsed<'_>, index: usize) -> Result<Vec<Frame>> {
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

/// Parses every file (with `parse_one`) and keeps the chosen series (the only one, or
/// `series_uid`).
fn choose_series<'a, T>(
    files: &'a [T],
    parse_one: impl Fn(&'a T) -> Result<Option<Parsed<'a>>>,
    series_uid: Option<&str>,
) -> Result<Vec<Parsed<'a>>> {
    let mut by_series: BTreeMap<String, Vec<Parsed<'a>>> = BTreeMap::new();
    for f in files {
        let Some(p) = guarded("a file", || parse_one(f))? else {
            continue;
        };
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

/// Assembles one CT series from the files of an upload held in memory (see the crate docs
/// for what is checked and refused): the same steps as [`assemble_files`] (every header
/// first, then one file at a time parsed whole and decoded), so both give the same result.
pub fn assemble(files: &[NamedBytes], options: &AssembleOptions) -> Result<Series> {
    check_files(files, &options.input)?;
    let parsed = choose_series(files, parse_header_bytes, options.series_uid.as_deref())?;
    assemble_parsed(parsed, options)
}

/// Assembles one CT series from files on disk, streaming: every file's header is parsed
/// first (up to Pixel Data, which stays on disk), the frames are checked and sorted, and then
/// one file at a time is read again, decoded and dropped, each frame written straight into
/// its place in the volume. Peak memory is about the volume plus one file. The same checks
/// and refusals as [`assemble`]; `name` is what messages call each file.
pub fn assemble_files(files: &[NamedPath], options: &AssembleOptions) -> Result<Series> {
    check_paths(files, &options.input)?;
    let parsed = choose_series(files, parse_header, options.series_uid.as_deref())?;
    assemble_parsed(parsed, options)
}

fn assemble_parsed(parsed: Vec<Parsed<'_>>, options: &AssembleOptions) -> Result<Series> {
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
    // slot[i]: where frame i goes in the volume
    let mut slot = vec![0usize; frames.len()];
    for (k, &i) in st.order.iter().enumerate() {
        slot[i] = k;
    }
    let mut data = vec![0f32; plane * frames.len()];
    let mut slices = Vec::with_capacity(frames.len());
    for &i in &st.order {
        let f = &frames[i];
        let p = &parsed[f.obj];
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
    decode_all(&parsed, &frames, &slot, &mut data, plane)?;
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

/// Runs `f`, turning a panic inside it (a dicom-rs decoder indexing past corrupt data, e.g.
/// the RLE decoder, found by `fuzz/`) into [`DicomError::Corrupt`] for `name`: corrupt input
/// is the client's fault, never a crashed request.
fn guarded<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(DicomError::Corrupt {
            name: name.to_string(),
            reason: format!("the decoder failed: {why}"),
        })
    })
}

/// Most threads decoding one series (each holds one file at a time).
const MAX_DECODE_THREADS: usize = 4;

/// Decodes every frame into its plane of `data` (`slot[i]` = the plane of frame `i`). Work
/// goes one object at a time (its frames are contiguous in `frames`): a file on disk is read
/// again with its pixel data, decoded into its planes, and dropped before the next one.
/// Objects are spread over up to [`MAX_DECODE_THREADS`] threads; on errors, the one of the
/// earliest object is returned (the same as decoding in order would give).
fn decode_all(
    parsed: &[Parsed<'_>],
    frames: &[Frame],
    slot: &[usize],
    data: &mut [f32],
    plane: usize,
) -> Result<()> {
    // (first frame, end) of each object's frames
    let mut jobs = Vec::new();
    let mut start = 0;
    while start < frames.len() {
        let obj = frames[start].obj;
        let end = start + frames[start..].iter().take_while(|f| f.obj == obj).count();
        jobs.push((start, end));
        start = end;
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_DECODE_THREADS)
        .min(jobs.len() / 4)
        .max(1);
    let mut planes: Vec<Option<&mut [f32]>> = data.chunks_mut(plane).map(Some).collect();
    // thread t takes jobs t, t + threads, ...: (job index, frame index, its plane)
    let mut work: Vec<Vec<(usize, usize, &mut [f32])>> = (0..threads).map(|_| Vec::new()).collect();
    for (j, &(start, end)) in jobs.iter().enumerate() {
        for i in start..end {
            if let Some(out) = planes[slot[i]].take() {
                work[j % threads].push((j, i, out));
            }
        }
    }
    let failed = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let run = |mut items: Vec<(usize, usize, &mut [f32])>| -> Option<(usize, DicomError)> {
        let mut luts = LutCache::default();
        let mut n = 0;
        while n < items.len() {
            let job = items[n].0;
            if failed.load(std::sync::atomic::Ordering::Relaxed) < job {
                return None;
            }
            let obj = frames[items[n].1].obj;
            let result =
                guarded(&parsed[obj].name, || open_pixels(&parsed[obj])).and_then(|full| {
                    let src = full.as_ref().unwrap_or(&parsed[obj]);
                    for (_, i, out) in items[n..].iter_mut().take_while(|it| it.0 == job) {
                        let f = &frames[*i];
                        guarded(&f.name, || decode_frame(src, f, out, &mut luts))?;
                    }
                    Ok(())
                });
            if let Err(e) = result {
                failed.fetch_min(job, std::sync::atomic::Ordering::Relaxed);
                return Some((job, e));
            }
            n += items[n..].iter().take_while(|it| it.0 == job).count();
        }
        None
    };
    let mut errors: Vec<(usize, DicomError)> = if threads == 1 {
        work.into_iter().filter_map(run).collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .into_iter()
                .map(|items| scope.spawn(|| run(items)))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    errors.sort_by_key(|(job, _)| *job);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// dicom-pixeldata's modality LUT (the table of RescaleSlope · x + RescaleIntercept for every
/// stored value), built once and reused while the frames share bits, sign and rescale.
#[derive(Default)]
struct LutCache {
    key: Option<(u16, bool, u64, u64)>,
    lut: Option<Lut<f32>>,
}

impl LutCache {
    fn get(&mut self, bits: u16, signed: bool, rescale: (f64, f64)) -> Option<&Lut<f32>> {
        let key = (bits, signed, rescale.0.to_bits(), rescale.1.to_bits());
        if self.key != Some(key) {
            self.key = Some(key);
            self.lut = Lut::new_rescale(bits, signed, Rescale::new(rescale.0, rescale.1)).ok();
        }
        self.lut.as_ref()
    }
}

/// Decodes one frame, applies its rescale, and writes it into `out` (one plane), through
/// dicom-pixeldata's codecs and modality LUT (which honours BitsStored and
/// PixelRepresentation): the LUT is cached across frames and applied in place, with the
/// same values as `to_vec_frame_with_options`, which stays the path for anything else.
fn decode_frame(p: &Parsed<'_>, f: &Frame, out: &mut [f32], luts: &mut LutCache) -> Result<()> {
    let corrupt = |e: dicom_pixeldata::Error| DicomError::Corrupt {
        name: f.name.clone(),
        reason: e.to_string(),
    };
    let decoded = p.obj.decode_pixel_data_frame(f.frame).map_err(corrupt)?;
    let wrong_size = |n: usize| DicomError::Corrupt {
        name: f.name.clone(),
        reason: format!("decoded {n} pixels, expected {}", out.len()),
    };
    let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
    let grey = decoded.samples_per_pixel() == 1;
    let bytes = decoded.frame_data(0).map_err(corrupt)?;
    match decoded.bits_allocated() {
        16 if grey => {
            if bytes.len() != out.len() * 2 {
                return Err(wrong_size(bytes.len() / 2));
            }
            if let Some(lut) = luts.get(decoded.bits_stored(), signed, f.geometry.rescale) {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = lut.get(u16::from_ne_bytes([b[0], b[1]]));
                }
                return Ok(());
            }
        }
        // dicom-pixeldata's 8-bit path builds its table for 8 bits whatever BitsStored says
        8 if grey => {
            if bytes.len() != out.len() {
                return Err(wrong_size(bytes.len()));
            }
            if let Some(lut) = luts.get(8, signed, f.geometry.rescale) {
                for (o, b) in out.iter_mut().zip(bytes) {
                    *o = lut.get(*b);
                }
                return Ok(());
            }
        }
        _ => {}
    }
    let (slope, intercept) = f.geometry.rescale;
    let opts = ConvertOptions::new()
        .with_modality_lut(ModalityLutOption::Override(Rescale::new(slope, intercept)));
    let px: Vec<f32> = decoded
        .to_vec_frame_with_options(0, &opts)
        .map_err(corrupt)?;
    if px.len() != out.len() {
        return Err(wrong_size(px.len()));
    }
    out.copy_from_slice(&px);
    Ok(())
}
