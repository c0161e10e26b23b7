//! Parsing uploaded files into DICOM objects and checking what they hold before any pixel is
//! decoded: Part 10 header, transfer syntax, modality, pixel layout.

use dicom_dictionary_std::{tags, uids};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::attrs::{integer, text};
use crate::error::{DicomError, Result};
use crate::input::NamedBytes;

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
    /// The object, pixel data included.
    pub obj: DefaultDicomObject,
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
        .map_err(|e| DicomError::Corrupt {
            name: file.name.clone(),
            reason: e.to_string(),
        })?;
    if obj
        .meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0')
        == uids::MEDIA_STORAGE_DIRECTORY_STORAGE
    {
        return Ok(None);
    }
    Ok(Some(Parsed {
        name: file.name.clone(),
        obj,
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
    if p.obj.get(tags::PIXEL_DATA).is_none() {
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
