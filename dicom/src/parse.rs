//! Parsing uploaded files into DICOM objects and checking what they hold before any pixel is
//! decoded: Part 10 header, transfer syntax, modality, pixel layout.

use dicom_dictionary_std::{tags, uids};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use dicom_core::{header::HasLength, Length, Tag, VR};
use dicom_parser::stateful::decode::{StatefulDecode, StatefulDecoder};

use crate::attrs::{integer, text};
use crate::error::{DicomError, Result};
use crate::input::{NamedBytes, NamedPath};

/// JPEG Extended (processes 2 and 4).
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

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
pub(crate) struct Parsed<'a> {
    /// The file's name in the upload.
    pub name: String,
    /// The object: whole (see [`parse`]), or its top-level elements up to (and without) Pixel
    /// Data (see [`parse_header`], [`parse_header_bytes`]).
    pub obj: DefaultDicomObject,
    /// Where the rest is, for an object parsed up to Pixel Data.
    pub pixels: Pixels<'a>,
}

/// Where the pixel data of a [`Parsed`] object is.
pub(crate) enum Pixels<'a> {
    /// In the object itself (parsed whole).
    Held,
    /// In these bytes of the upload (parsed again whole by [`open_pixels`]).
    Bytes(&'a [u8]),
    /// In this file on disk (parsed again whole by [`open_pixels`]).
    File(PathBuf),
}

/// Walks the element headers of a Part 10 file (with dicom-parser's decoder; values are skipped,
/// never read) and refuses a defined value length that goes past the end of the file.
///
/// dicom-parser allocates and zero-fills a value's declared length before it reads it, so a
/// few bytes declaring a 4 GiB value would cost 4 GiB of memory (found by `fuzz/`'s
/// `dicom_series` target); this check runs first. Files this walk cannot follow (garbage,
/// an unknown transfer syntax) are left to the parser's own errors. A deflated dataset is
/// walked inflated, its lengths bounded by deflate's largest ratio times the file's rest.
fn check_declared_lengths<R: Read + Seek>(mut src: R, total: u64, name: &str) -> Result<()> {
    let too_long = |tag: Tag, len: u32, left: u64| DicomError::Corrupt {
        name: name.to_string(),
        reason: format!("element {tag} declares {len} bytes, but the file has {left} left"),
    };
    let misaligned = |tag: Tag, vr: VR, len: u32| DicomError::Corrupt {
        name: name.to_string(),
        reason: format!("element {tag} ({vr:?}) has {len} bytes, not a whole number of values"),
    };
    let mut head = [0u8; 132];
    let n = src.read(&mut head).unwrap_or(0);
    let start = if n >= 132 && &head[128..132] == b"DICM" {
        132
    } else if head.starts_with(b"DICM") {
        4
    } else {
        return Ok(());
    };
    let Some(explicit) = TransferSyntaxRegistry.get(uids::EXPLICIT_VR_LITTLE_ENDIAN) else {
        return Ok(());
    };
    if src.seek(SeekFrom::Start(start)).is_err() {
        return Ok(());
    }
    // file meta group: explicit VR little endian, its length first
    let mut meta = match StatefulDecoder::new_with(&mut src, explicit, Default::default(), start) {
        Ok(d) => d,
        Err(_) => return Ok(()),
    };
    let Ok(h) = meta.decode_header() else {
        return Ok(());
    };
    if h.tag != Tag(0x0002, 0x0000) || h.length() != Length(4) {
        return Ok(());
    }
    // the value's 4 bytes whatever the VR says, as dicom-object reads it
    let mut raw = Vec::with_capacity(4);
    if meta.read_to_vec(4, &mut raw).is_err() || raw.len() != 4 {
        return Ok(());
    }
    let group_length = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let meta_end = meta.position() + u64::from(group_length);
    if meta_end > total {
        return Err(too_long(h.tag, group_length, total - meta.position()));
    }
    let mut ts_uid = String::new();
    while meta.position() < meta_end {
        let Ok(h) = meta.decode_header() else {
            return Ok(());
        };
        let Some(len) = h.length().get() else {
            return Ok(());
        };
        let left = total.saturating_sub(meta.position());
        if u64::from(len) > left {
            return Err(too_long(h.tag, len, left));
        }
        if h.tag == tags::TRANSFER_SYNTAX_UID {
            // (len is within the file: checked above)
            let mut raw = Vec::new();
            if meta.read_to_vec(len, &mut raw).is_err() {
                return Ok(());
            }
            ts_uid = String::from_utf8_lossy(&raw)
                .trim_end_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string();
        } else if meta.skip_bytes(len).is_err() {
            return Ok(());
        }
    }
    let Some(ts) = TransferSyntaxRegistry.get(&ts_uid) else {
        return Ok(());
    };
    let position = meta.position();
    drop(meta);
    if ts_uid == uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        // the dataset is deflated: walked as inflated, bounded by deflate's largest ratio
        let Some(explicit) = TransferSyntaxRegistry.get(uids::EXPLICIT_VR_LITTLE_ENDIAN) else {
            return Ok(());
        };
        let bound = total
            .saturating_sub(position)
            .saturating_mul(DEFLATE_MAX_RATIO);
        let inflated = flate2::read::DeflateDecoder::new(&mut src);
        let Ok(mut dec) = StatefulDecoder::new_with(inflated, explicit, Default::default(), 0)
        else {
            return Ok(());
        };
        return walk(
            &mut dec,
            bound,
            |d, len| d.skip_bytes(len).is_ok(),
            &too_long,
            &misaligned,
        );
    }
    let Ok(mut dec) = StatefulDecoder::new_with(&mut src, ts, Default::default(), position) else {
        return Ok(());
    };
    walk(
        &mut dec,
        total,
        |d, len| {
            if len > 1 << 16 {
                d.seek(d.position() + u64::from(len)).is_ok()
            } else {
                d.skip_bytes(len).is_ok()
            }
        },
        &too_long,
        &misaligned,
    )
}

/// Deflate's largest ratio of inflated to deflated size (about 1032 : 1).
const DEFLATE_MAX_RATIO: u64 = 1032;

/// Walks a dataset's element headers up to its end (or the first one it cannot decode),
/// refusing a defined length past `end` (a position of `dec`); `skip` moves past a value.
fn walk<S: StatefulDecode>(
    dec: &mut S,
    end: u64,
    mut skip: impl FnMut(&mut S, u32) -> bool,
    too_long: &dyn Fn(Tag, u32, u64) -> DicomError,
    misaligned: &dyn Fn(Tag, VR, u32) -> DicomError,
) -> Result<()> {
    // inside encapsulated Pixel Data, items are fragments (bytes), not datasets
    let mut fragments = false;
    while let Ok(h) = dec.decode_header() {
        if h.tag == Tag(0xFFFE, 0xE0DD) {
            fragments = false;
            continue;
        }
        let Some(len) = h.length().get() else {
            // undefined length: a sequence, an item or encapsulated pixel data; walk into it
            fragments |= h.tag == tags::PIXEL_DATA;
            continue;
        };
        let left = end.saturating_sub(dec.position());
        if u64::from(len) > left {
            return Err(too_long(h.tag, len, left));
        }
        // dicom-parser reads whole values of binary VRs and skips the remainder's bytes in its
        // count but not in the file: the next header would be read from the wrong place
        let unit = match h.vr() {
            VR::US | VR::SS | VR::OW => 2,
            VR::AT | VR::FL | VR::OF | VR::SL | VR::UL | VR::OL => 4,
            VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
            _ => 1,
        };
        if len % unit != 0 && !(fragments && h.tag == Tag(0xFFFE, 0xE000)) {
            return Err(misaligned(h.tag, h.vr(), len));
        }
        let container = h.vr() == VR::SQ || (h.tag == Tag(0xFFFE, 0xE000) && !fragments);
        if !container && !skip(dec, len) {
            return Ok(());
        }
    }
    Ok(())
}

fn has_part10_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(b"DICM") || bytes.get(128..132) == Some(&b"DICM"[..])
}

/// Parses one file. Bytes without the `DICM` magic are [`DicomError::NotDicom`]; a Part 10
/// file that does not parse is [`DicomError::Corrupt`]. `None` for a DICOMDIR (skipped).
pub(crate) fn parse<'a>(file: &NamedBytes) -> Result<Option<Parsed<'a>>> {
    Ok(parse_bytes(file, None)?.map(|obj| Parsed {
        name: file.name.clone(),
        obj,
        pixels: Pixels::Held,
    }))
}

/// Parses one file held in memory up to Pixel Data, like [`parse_header`] does from disk:
/// the series assembler reads both ways with the same parse, so that an upload assembles
/// the same from memory as from disk whatever it holds (elements out of order past Pixel
/// Data, corrupt bytes after it: found by `fuzz/`'s `dicom_series` target). The same
/// refusals as [`parse`].
pub(crate) fn parse_header_bytes(file: &NamedBytes) -> Result<Option<Parsed<'_>>> {
    Ok(
        parse_bytes(file, Some(tags::PIXEL_DATA))?.map(|obj| Parsed {
            name: file.name.clone(),
            obj,
            pixels: Pixels::Bytes(&file.bytes),
        }),
    )
}

/// The checks and the parse of [`parse`] and [`parse_header_bytes`]: up to `until` (exclusive)
/// or whole; `None` for a DICOMDIR.
fn parse_bytes(file: &NamedBytes, until: Option<Tag>) -> Result<Option<DefaultDicomObject>> {
    if !has_part10_magic(&file.bytes) {
        return Err(not_part10(&file.name));
    }
    check_declared_lengths(
        std::io::Cursor::new(&file.bytes[..]),
        file.bytes.len() as u64,
        &file.name,
    )?;
    let mut options = OpenFileOptions::new().read_preamble(ReadPreamble::Auto);
    if let Some(tag) = until {
        options = options.read_until(tag);
    }
    let obj = options
        .from_reader(&file.bytes[..])
        .map_err(corrupt(&file.name))?;
    Ok((!is_dicomdir(&obj)).then_some(obj))
}

fn not_part10(name: &str) -> DicomError {
    DicomError::NotDicom {
        name: name.to_string(),
        reason: "no DICM magic at byte 128 (not a DICOM Part 10 file)".into(),
    }
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
pub(crate) fn parse_header<'a>(file: &NamedPath) -> Result<Option<Parsed<'a>>> {
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(&file.path)
        .and_then(|f| f.take(132).read_to_end(&mut head))
        .map_err(|e| DicomError::Io {
            context: format!("reading {}", file.path.display()),
            source: e,
        })?;
    if !has_part10_magic(&head) {
        return Err(not_part10(&file.name));
    }
    let io = |e| DicomError::Io {
        context: format!("reading {}", file.path.display()),
        source: e,
    };
    let f = std::fs::File::open(&file.path).map_err(io)?;
    let total = f.metadata().map_err(io)?.len();
    check_declared_lengths(std::io::BufReader::new(f), total, &file.name)?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .read_until(tags::PIXEL_DATA)
        .open_file(&file.path)
        .map_err(corrupt(&file.name))?;
    Ok((!is_dicomdir(&obj)).then(|| Parsed {
        name: file.name.clone(),
        obj,
        pixels: Pixels::File(file.path.clone()),
    }))
}

/// For an object parsed up to Pixel Data: the whole file (from the upload's bytes or from
/// disk), parsed again with its pixel data ([`DicomError::NoPixelData`] when it has none).
/// `None` for an object that already holds its pixel data.
pub(crate) fn open_pixels(p: &Parsed<'_>) -> Result<Option<Parsed<'static>>> {
    let options = || OpenFileOptions::new().read_preamble(ReadPreamble::Auto);
    let obj = match &p.pixels {
        Pixels::Held => return Ok(None),
        Pixels::Bytes(bytes) => options().from_reader(*bytes),
        Pixels::File(path) => options().open_file(path),
    }
    .map_err(corrupt(&p.name))?;
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(DicomError::NoPixelData {
            name: p.name.clone(),
        });
    }
    Ok(Some(Parsed {
        name: p.name.clone(),
        obj,
        pixels: Pixels::Held,
    }))
}

/// Checks one file of the chosen series: CT modality and SOP class, a supported transfer
/// syntax, pixel data present, one 8/16-bit grey plane.
pub(crate) fn check_image(p: &Parsed<'_>) -> Result<()> {
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
    // an object parsed up to Pixel Data is checked for it when it is decoded
    if matches!(p.pixels, Pixels::Held) && p.obj.get(tags::PIXEL_DATA).is_none() {
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
    // lossy JPEG is decoded at 8 bits only (jpeg-decoder); 12-bit Extended (process 4) is
    // refused by name rather than as a decoding failure
    let stored = integer(&p.obj, tags::BITS_STORED).unwrap_or(0);
    if ts == JPEG_EXTENDED && stored > 8 {
        return Err(DicomError::UnsupportedTransferSyntax {
            uid: ts,
            name: format!(
                "JPEG Extended with {stored} bits stored (only 8-bit lossy JPEG is decoded)"
            ),
            file: p.name.clone(),
        });
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
pub(crate) fn sop_class_uid(p: &Parsed<'_>) -> String {
    text(&p.obj, tags::SOP_CLASS_UID)
        .or_else(|| meta_uid(p.obj.meta().media_storage_sop_class_uid()))
        .unwrap_or_default()
}

/// SOPInstanceUID, else the file meta's MediaStorageSOPInstanceUID.
pub(crate) fn sop_instance_uid(p: &Parsed<'_>) -> String {
    text(&p.obj, tags::SOP_INSTANCE_UID)
        .or_else(|| meta_uid(p.obj.meta().media_storage_sop_instance_uid()))
        .unwrap_or_default()
}
