//! The zip container of `torch.save` (PyTorch >= 1.6): every record lives under one top
//! folder, `<archive>/data.pkl`, `<archive>/data/<key>`, `<archive>/version`, ...

use crate::crc32::crc32;
use crate::error::{CheckpointError, Result};
use std::borrow::Cow;
use std::io::{Cursor, Read, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// The top folder name this crate writes.
pub(crate) const ARCHIVE_NAME: &str = "archive";
/// Alignment of storage data inside the file, as PyTorch uses.
const STORAGE_ALIGNMENT: u16 = 64;

/// A `torch.save` zip archive opened over an in-memory file.
pub(crate) struct Archive<'a> {
    bytes: &'a [u8],
    zip: ZipArchive<Cursor<&'a [u8]>>,
    prefix: String,
    /// Largest uncompressed size accepted for one compressed record.
    max_record: usize,
}

/// Whether `bytes` look like a pre-1.6 `torch.save` file (a bare pickle, or a tar).
fn is_legacy(bytes: &[u8]) -> bool {
    let pickle = bytes.len() >= 2 && bytes[0] == 0x80 && bytes[1] <= 5;
    let tar = bytes.get(257..262) == Some(b"ustar".as_slice());
    pickle || tar
}

impl<'a> Archive<'a> {
    /// Opens the archive, rejecting legacy files and TorchScript archives.
    pub(crate) fn open(bytes: &'a [u8]) -> Result<Self> {
        let zip_magic = bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06");
        if !zip_magic {
            if is_legacy(bytes) {
                return Err(CheckpointError::LegacyFormat);
            }
            return Err(CheckpointError::NotCheckpoint(
                "neither a zip archive nor a pickle".into(),
            ));
        }
        let zip = ZipArchive::new(Cursor::new(bytes))?;
        let mut prefixes: Vec<&str> = Vec::new();
        for name in zip.file_names() {
            let mut parts = name.splitn(3, '/');
            let (Some(top), Some(second)) = (parts.next(), parts.next()) else {
                continue;
            };
            if second == "constants.pkl" || (second == "code" && parts.next().is_some()) {
                return Err(CheckpointError::TorchScript);
            }
            if second == "data.pkl" && parts.next().is_none() && !prefixes.contains(&top) {
                prefixes.push(top);
            }
        }
        let prefix = match prefixes.as_slice() {
            [one] => one.to_string(),
            [] => return Err(CheckpointError::MissingRecord("<archive>/data.pkl".into())),
            _ => {
                return Err(CheckpointError::Zip(format!(
                    "several top folders hold a data.pkl: {}",
                    prefixes.join(", ")
                )))
            }
        };
        let max_record = bytes.len().saturating_mul(4).saturating_add(1 << 20);
        Ok(Archive {
            bytes,
            zip,
            prefix,
            max_record,
        })
    }

    /// Whether `<archive>/<name>` exists.
    pub(crate) fn has_record(&self, name: &str) -> bool {
        self.zip
            .index_for_name(&format!("{}/{name}", self.prefix))
            .is_some()
    }

    /// The content of `<archive>/<name>`; stored records are borrowed, not copied.
    /// The CRC is verified either way.
    pub(crate) fn record(&mut self, name: &str) -> Result<Cow<'a, [u8]>> {
        let full = format!("{}/{name}", self.prefix);
        let Some(index) = self.zip.index_for_name(&full) else {
            return Err(CheckpointError::MissingRecord(full));
        };
        let mut file = self.zip.by_index(index)?;
        let size = file.size();
        if file.compression() == CompressionMethod::Stored {
            let start = usize::try_from(file.data_start()).ok();
            let len = usize::try_from(size).ok();
            let data = start
                .zip(len)
                .filter(|_| file.compressed_size() == size)
                .and_then(|(s, l)| self.bytes.get(s..s.checked_add(l)?))
                .ok_or_else(|| CheckpointError::Zip(format!("{full}: data out of bounds")))?;
            if crc32(data) != file.crc32() {
                return Err(CheckpointError::Zip(format!("{full}: CRC mismatch")));
            }
            return Ok(Cow::Borrowed(data));
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s <= self.max_record)
            .ok_or_else(|| {
                CheckpointError::TooLarge(format!("{full}: uncompressed size {size}"))
            })?;
        let mut out = Vec::with_capacity(size);
        (&mut file)
            .take(size as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| CheckpointError::Zip(format!("{full}: {e}")))?;
        if out.len() != size {
            return Err(CheckpointError::Zip(format!(
                "{full}: {} bytes after decompression, header says {size}",
                out.len()
            )));
        }
        Ok(Cow::Owned(out))
    }
}

/// Builds the archive: `data.pkl`, `byteorder`, the storages `data/0..n`, `version` and
/// `.data/serialization_id`, all stored uncompressed, storages aligned to 64 bytes.
///
/// `.format_version` and `.storage_alignment` are deliberately left out: with them,
/// PyTorch may compute storage offsets assuming its own zip writer's exact layout.
pub(crate) fn write_archive(pickle: &[u8], storages: &[&[u8]]) -> Result<Vec<u8>> {
    let total: usize = storages.iter().map(|s| s.len()).sum::<usize>() + pickle.len();
    let mut zip = ZipWriter::new(Cursor::new(Vec::with_capacity(total + 4096)));
    add(&mut zip, "data.pkl", pickle, false)?;
    add(&mut zip, "byteorder", b"little", false)?;
    let mut id_hash: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(crc32(pickle));
    for (i, s) in storages.iter().enumerate() {
        add(&mut zip, &format!("data/{i}"), s, true)?;
        id_hash = (id_hash ^ u64::from(crc32(s))).wrapping_mul(0x0100_0000_01b3);
    }
    add(&mut zip, "version", b"3\n", false)?;
    // PyTorch writes 40 decimal digits; any content is accepted. Derived from the data so
    // equal inputs give byte-identical files.
    let serialization_id = format!(
        "{:020}{:020}",
        id_hash,
        id_hash.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
    add(
        &mut zip,
        ".data/serialization_id",
        serialization_id.as_bytes(),
        false,
    )?;
    Ok(zip.finish()?.into_inner())
}

/// Adds one stored record `archive/<name>`.
fn add(zip: &mut ZipWriter<Cursor<Vec<u8>>>, name: &str, data: &[u8], align: bool) -> Result<()> {
    let mut opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(data.len() as u64 >= 0xFFFF_FFFF);
    if align {
        opts = opts.with_alignment(STORAGE_ALIGNMENT);
    }
    zip.start_file(format!("{ARCHIVE_NAME}/{name}"), opts)?;
    zip.write_all(data)
        .map_err(|e| CheckpointError::Zip(e.to_string()))
}
