//! Parsing uploaded files into DICOM objects and checking what they hold before any pixel is
//! decoded: Part 10 header, transfer syntax, modality, pixel layout.

use dicom_dictionary_std::{tags, uids};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use std::io::Read;
use std::path::PathBuf;

use crate::attrs::{integer, text};
use crate::error::{DicomError, Result};
use crate::input::{NamedBytes, NamedPath};

/// The transfer syntaxes whose pixel data this build decodes (all with pure-Rust codecs).
pub const SUPPORTED_TRANSFER_SYNTAXES: &[(&str, &str)] = &[
    (uids::IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian"),
    (uids::EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian"),
    (
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        "Deflated Explicit VR Little Endian",
    ),
    (uids::RLE_LOSSLESS, "RLE Lossless"),
    (uids::JPEG_BASELINE8_BIT, "JPEG Baseline (Process 1)"),
    (uids::JPEG_EXTENDED12_BIT, "JPEG Extended (Process 2 & 4)"),
    (uids::JPEG_LOSSLESS, "JPEG Lossless (Process 14)"),
    (
        uids::JPEG_LOSSLESS_SV1,
        "JPEG Lossless SV1 (Process 14, selection value 1)",
    ),
    (uids::JPEG2000_LOSSLESS, "JPEG 2000 Lossless"),
    (uids::JPEG2000, "JPEG 2000"),
];

/// The SOP classes of CT images this crate assembles.
const CT_CLASSES: &[&str] = &[
    uids::CT_IMAGE_STORAGE,
    uids::ENHANCED_CT_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
];

/// A parsed file of an upload.
pub(crate) struct Parsed {
    /// The file's name in the upload.
    pub name: String,
    /// The object: pixel data included when parsed from memory, up to (and without) Pixel
    /// Data when parsed from a file on disk.
    pub obj: DefaultDicomObject,
    /// The file on disk holding the pixel data, for objects parsed up to Pixel Data only.
    pub path: Option<PathBuf>,
}

fn has_part10_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(b"DICM") || bytes.get(128..132) == Some(&b"DICM"[..])
}

/// Parses one file. Bytes without the `DICM` magic are [`DicomError::NotDicom`]; a Part 10
/// file that does not parse is [`DicomError::Corrupt`]. `None` for a DICOMDIR (skipped).
pub(crate) fn parse(file: &NamedBytes) -> Result<Option<Parsed>> {
    if !has_part10_magic(&file.bytes) {
        return Err(DicomError::NotDicom {
            name: file.name.clone(),
            reason: "no DICM magic at byte 128 (not a DICOM Part 10 file)".into(),
        });
    }
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .from_reader(&file.bytes[..])
        .map_err(corrupt(&file.name))?;
    Ok((!is_dicomdir(&obj)).then(|| Parsed {
        name: file.name.clone(),
        obj,
        path: None,
    }))
}

fn is_dicomdir(obj: &DefaultDicomObject) -> bool {
    obj.meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0')
        == uids::MEDIA_STORAGE_DIRECTORY_STORAGE
}

fn corrupt(name: &str) -> impl Fn(dicom_object::ReadError) -> DicomError + '_ {
    move |e| DicomError::Corrupt {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// Parses one file on disk up to Pixel Data (which is left on disk, see [`open_pixels`]).
/// The same refusals as [`parse`].
pub(crate) fn parse_header(file: &NamedPath) -> Result<Option<Parsed>> {
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(&file.path)
        .and_then(|f| f.take(132).read_to_end(&mut head))
        .map_err(|e| DicomError::Io {
            context: format!("reading {}", file.path.display()),
            source: e,
        })?;
    if !has_part10_magic(&head) {
        return Err(DicomError::NotDicom {
            name: file.name.clone(),
            reason: "no DICM magic at byte 128 (not a DICOM Part 10 file)".into(),
        });
    }
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .read_until(tags::PIXEL_DATA)
        .open_file(&file.path)
        .map_err(corrupt(&file.name))?;
    Ok((!is_dicomdir(&obj)).then(|| Parsed {
        name: file.name.clone(),
        obj,
        path: Some(file.path.clone()),
    }))
}

/// For an object parsed from disk up to Pixel Data: the whole file, parsed again with its
/// pixel data ([`DicomError::NoPixelData`] when it has none). `None` for an object that
/// already holds its pixel data.
pub(crate) fn open_pixels(p: &Parsed) -> Result<Option<Parsed>> {
    let Some(path) = &p.path else {
        return Ok(None);
    };
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .open_file(path)
        .map_err(corrupt(&p.name))?;
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(DicomError::NoPixelData {
            name: p.name.clone(),
        });
    }
    Ok(Some(Parsed {
        name: p.name.clone(),
        obj,
        path: None,
    }))
}

/// Checks one file of the chosen series: CT modality and SOP class, a supported transfer
/// syntax, pixel data present, one 8/16-bit grey plane.
pub(crate) fn check_image(p: &Parsed) -> Result<()> {
    let modality = text(&p.obj, tags::MODALITY).unwrap_or_default();
    if modality != "CT" {
        return Err(DicomError::NotCt {
            modality: if modality.is_empty() {
                "(none)".into()
            } else {
                modality
            },
        });
    }
    let class = sop_class_uid(p);
    if !CT_CLASSES.contains(&class.as_str()) {
        return Err(DicomError::UnsupportedImage(format!(
            "{}: SOP class {class} is not a CT image storage class",
            p.name
        )));
    }
    let ts = p
        .obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    if !SUPPORTED_TRANSFER_SYNTAXES
        .iter()
        .any(|(uid, _)| *uid == ts)
    {
        let name = TransferSyntaxRegistry
            .get(&ts)
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| "unknown".into());
        return Err(DicomError::UnsupportedTransferSyntax {
            uid: ts,
            name,
            file: p.name.clone(),
        });
    }
    // an object parsed from disk up to Pixel Data is checked for it when it is decoded
    if p.path.is_none() && p.obj.get(tags::PIXEL_DATA).is_none() {
        return Err(DicomError::NoPixelData {
            name: p.name.clone(),
        });
    }
    let samples = integer(&p.obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let photometric = text(&p.obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    if samples != 1 || !photometric.starts_with("MONOCHROME") {
        return Err(DicomError::UnsupportedImage(format!(
            "{}: {samples} samples per pixel, {photometric} (expected one grey-level sample)",
            p.name
        )));
    }
    let bits = integer(&p.obj, tags::BITS_ALLOCATED).unwrap_or(0);
    if bits != 8 && bits != 16 {
        return Err(DicomError::UnsupportedImage(format!(
            "{}: {bits} bits allocated (expected 8 or 16)",
            p.name
        )));
    }
    Ok(())
}

fn meta_uid(uid: &str) -> Option<String> {
    let uid = uid.trim_end_matches(['\0', ' ']);
    (!uid.is_empty()).then(|| uid.to_string())
}

/// SOPClassUID, else the file meta's MediaStorageSOPClassUID (anonymisers sometimes blank
/// the former).
pub(crate) fn sop_class_uid(p: &Parsed) -> String {
    text(&p.obj, tags::SOP_CLASS_UID)
        .or_else(|| meta_uid(p.obj.meta().media_storage_sop_class_uid()))
        .unwrap_or_default()
}

/// SOPInstanceUID, else the file meta's MediaStorageSOPInstanceUID.
pub(crate) fn sop_instance_uid(p: &Parsed) -> String {
    text(&p.obj, tags::SOP_INSTANCE_UID)
        .or_else(|| meta_uid(p.obj.meta().media_storage_sop_instance_uid()))
        .unwrap_or_default()
}
