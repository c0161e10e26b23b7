//! Small synthetic DICOM series written with dicom-object, and the shipped JPEG 2000 series
//! with its blank UIDs filled, to load into a PACS.

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// A fresh `2.25.` UID.
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

/// The repository root (the folder above `testkit/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn put_str(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn put_strs(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: &[&str]) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(v.iter().map(|s| s.to_string()).collect()),
    ));
}

/// Identity of a written series.
#[derive(Debug, Clone)]
pub struct Written {
    /// StudyInstanceUID.
    pub study: String,
    /// SeriesInstanceUID.
    pub series: String,
    /// The files, one per slice.
    pub files: Vec<PathBuf>,
}

/// A small axial series: slices of `rows` × `cols` int16 pixels (slope 1, intercept −1024,
/// 0.75 × 0.8 mm, 2.5 mm apart), Explicit VR Little Endian.
#[derive(Debug, Clone)]
pub struct SmallSeries<'a> {
    /// StudyInstanceUID.
    pub study: &'a str,
    /// SeriesInstanceUID.
    pub series: &'a str,
    /// FrameOfReferenceUID.
    pub frame_of_reference: &'a str,
    /// Modality: `CT` (CT Image Storage) or anything else (MR Image Storage).
    pub modality: &'a str,
    /// PatientID.
    pub patient_id: &'a str,
    /// SeriesDescription.
    pub description: &'a str,
    /// Rows of each slice.
    pub rows: usize,
    /// Columns of each slice.
    pub cols: usize,
}

impl SmallSeries<'_> {
    /// Slice `k` (InstanceNumber `k + 1`, a fresh SOPInstanceUID), with its file meta.
    pub fn slice(&self, k: usize) -> FileDicomObject<InMemDicomObject> {
        let (rows, cols) = (self.rows, self.cols);
        let sop_class = if self.modality == "CT" {
            uids::CT_IMAGE_STORAGE
        } else {
            uids::MR_IMAGE_STORAGE
        };
        let mut o = InMemDicomObject::new_empty();
        put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
        put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, sop_class);
        put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &new_uid());
        put_str(&mut o, tags::PATIENT_NAME, VR::PN, "Test^Web");
        put_str(&mut o, tags::PATIENT_ID, VR::LO, self.patient_id);
        put_str(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, self.study);
        put_str(&mut o, tags::STUDY_DATE, VR::DA, "20260101");
        put_str(&mut o, tags::STUDY_ID, VR::SH, "1");
        put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, self.series);
        put_str(&mut o, tags::SERIES_NUMBER, VR::IS, "2");
        put_str(&mut o, tags::SERIES_DESCRIPTION, VR::LO, self.description);
        put_str(&mut o, tags::MODALITY, VR::CS, self.modality);
        put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &(k + 1).to_string());
        put_str(
            &mut o,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            self.frame_of_reference,
        );
        let z = format!("{}", -40.0 + 2.5 * k as f64);
        put_strs(
            &mut o,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &["-20", "-15", &z],
        );
        put_strs(
            &mut o,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            &["1", "0", "0", "0", "1", "0"],
        );
        put_strs(&mut o, tags::PIXEL_SPACING, VR::DS, &["0.75", "0.8"]);
        put_str(&mut o, tags::SLICE_THICKNESS, VR::DS, "2.5");
        put_str(
            &mut o,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        for (tag, v) in [
            (tags::SAMPLES_PER_PIXEL, 1u16),
            (tags::ROWS, rows as u16),
            (tags::COLUMNS, cols as u16),
            (tags::BITS_ALLOCATED, 16),
            (tags::BITS_STORED, 16),
            (tags::HIGH_BIT, 15),
            (tags::PIXEL_REPRESENTATION, 1),
        ] {
            o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        }
        put_str(&mut o, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
        put_str(&mut o, tags::RESCALE_SLOPE, VR::DS, "1");
        let px: Vec<u16> = (0..rows * cols)
            .map(|i| ((i as i32 * 37 + k as i32 * 101) % 2000 - 300) as i16 as u16)
            .collect();
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(px.into()),
        ));
        o.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .unwrap()
    }
}

/// Writes a small axial series (`slices` slices of 12 rows × 16 columns, see [`SmallSeries`])
/// into `dir` (`slice000.dcm`, ...), in `study`, with a fresh SeriesInstanceUID.
pub fn write_small_series(
    dir: &Path,
    study: &str,
    modality: &str,
    slices: usize,
    patient: &str,
    description: &str,
) -> Written {
    std::fs::create_dir_all(dir).unwrap();
    let series = new_uid();
    let frame_of_reference = new_uid();
    let spec = SmallSeries {
        study,
        series: &series,
        frame_of_reference: &frame_of_reference,
        modality,
        patient_id: patient,
        description,
        rows: 12,
        cols: 16,
    };
    let files = (0..slices)
        .map(|k| {
            let path = dir.join(format!("slice{k:03}.dcm"));
            spec.slice(k).write_to_file(&path).unwrap();
            path
        })
        .collect();
    Written {
        study: study.into(),
        series,
        files,
    }
}

/// Slice `k` of a small CT series `series` in `study` (`rows` × `cols`, see [`SmallSeries`];
/// FrameOfReferenceUID `{series}.1`), as the bytes of a DICOM file.
pub fn ct_slice(study: &str, series: &str, k: usize, rows: usize, cols: usize) -> Vec<u8> {
    let frame_of_reference = format!("{series}.1");
    let spec = SmallSeries {
        study,
        series,
        frame_of_reference: &frame_of_reference,
        modality: "CT",
        patient_id: "FL-SLICE",
        description: "small CT",
        rows,
        cols,
    };
    let mut out = Vec::new();
    spec.slice(k).write_all(&mut out).unwrap();
    out
}

/// The shipped JPEG 2000 series (`data/totalseg/example_ct_dicom/`, blank UIDs) copied into
/// `dir` with StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID (from the file meta) and
/// PatientID (`FL-SHARED`) filled, so that a PACS accepts it; pixel data is kept as it is
/// (encapsulated).
pub fn shared_series_with_uids(dir: &Path) -> Written {
    std::fs::create_dir_all(dir).unwrap();
    let src = repo_root().join("data/totalseg/example_ct_dicom");
    let mut names: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let (study, series) = (new_uid(), new_uid());
    let mut files = Vec::new();
    for p in names {
        let mut f = dicom_object::open_file(&p).unwrap();
        let sop = f
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        put_str(&mut f, tags::STUDY_INSTANCE_UID, VR::UI, &study);
        put_str(&mut f, tags::SERIES_INSTANCE_UID, VR::UI, &series);
        put_str(&mut f, tags::SOP_INSTANCE_UID, VR::UI, &sop);
        put_str(&mut f, tags::PATIENT_ID, VR::LO, "FL-SHARED");
        put_str(&mut f, tags::SERIES_DESCRIPTION, VR::LO, "shared JPEG 2000");
        let out = dir.join(p.file_name().unwrap());
        f.write_to_file(&out).unwrap();
        files.push(out);
    }
    Written {
        study,
        series,
        files,
    }
}
