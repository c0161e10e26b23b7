//! Reading single-file NIfTI-1 images (`.nii`, `.nii.gz`) from a path or from memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use super::header::{Header, DEFAULT_VOX_OFFSET, HEADER_SIZE};
use crate::dtype::{read_full, read_samples, Scaling};
use crate::error::{ImagingError, Result};
use crate::limits::Limits;
use crate::volume::Volume;

/// The two magic bytes that open a gzip stream.
pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Where the stream comes from: what is known about its size before reading it.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Uncompressed, with the total byte count when known.
    Raw(Option<u64>),
    /// Gzip-compressed, with the compressed byte count when known.
    Gzip(Option<u64>),
}

/// Reads a NIfTI-1 image held in memory (`.nii` or `.nii.gz`; gzip is detected by its magic
/// bytes, not by a name).
///
/// Voxels come back as `f32` in file order (x fastest). When `scl_slope` is finite, non-zero
/// and not the identity pair, each value is `raw as f64 * slope + inter` (in `f64`, then
/// rounded to `f32`), exactly as `np.asanyarray(nib.load(f).dataobj).astype(np.float32)`;
/// otherwise the raw value is cast straight to `f32`. The affine is nibabel's best affine
/// (see [`Header::best_affine`]).
pub fn read_nifti_bytes(bytes: &[u8], limits: &Limits) -> Result<Volume> {
    let len = bytes.len() as u64;
    if bytes.starts_with(&GZIP_MAGIC) {
        read_stream(MultiGzDecoder::new(bytes), Source::Gzip(Some(len)), limits)
    } else {
        read_stream(bytes, Source::Raw(Some(len)), limits)
    }
}

/// Reads an uncompressed NIfTI-1 stream of unknown length (a decompressor, a socket), with
/// the same checks as [`read_nifti_bytes`]; nothing past the header's declared size (the
/// header, its extensions and the voxels) is read from `reader`.
pub fn read_nifti_stream<R: Read>(reader: R, limits: &Limits) -> Result<Volume> {
    read_stream(reader, Source::Raw(None), limits)
}

/// Reads a NIfTI-1 image file (`.nii` or `.nii.gz`, detected by content), streaming it:
/// the file is never held in memory in compressed form. See [`read_nifti_bytes`].
pub fn read_nifti(path: &Path, limits: &Limits) -> Result<Volume> {
    let context = || format!("reading {}", path.display());
    let file = File::open(path).map_err(|e| ImagingError::io(context(), e))?;
    let len = file.metadata().map(|m| m.len()).ok();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let head = reader
        .fill_buf()
        .map_err(|e| ImagingError::io(context(), e))?;
    if head.starts_with(&GZIP_MAGIC) {
        read_stream(MultiGzDecoder::new(reader), Source::Gzip(len), limits)
    } else {
        read_stream(reader, Source::Raw(len), limits)
    }
}

/// `vox_offset` as a byte count: a whole number of at least 352.
fn vox_offset(header: &Header) -> Result<u64> {
    let v = header.vox_offset;
    if !v.is_finite() || v.fract() != 0.0 {
        return Err(ImagingError::nifti(format!(
            "vox_offset {v} is not a whole number"
        )));
    }
    if v < DEFAULT_VOX_OFFSET as f32 {
        return Err(ImagingError::nifti(format!(
            "vox_offset {v} is less than {DEFAULT_VOX_OFFSET}"
        )));
    }
    Ok(v as u64)
}

/// Discards `count` bytes; returns how many there were.
fn skip<R: Read>(r: &mut R, count: u64) -> Result<u64> {
    let mut buf = vec![0u8; count.min(1 << 16) as usize];
    let mut done = 0u64;
    while done < count {
        let want = (count - done).min(buf.len() as u64) as usize;
        let n = read_full(r, &mut buf[..want], "reading NIfTI header extensions")?;
        done += n as u64;
        if n < want {
            break;
        }
    }
    Ok(done)
}

fn read_stream<R: Read>(mut r: R, source: Source, limits: &Limits) -> Result<Volume> {
    let mut raw_header = [0u8; HEADER_SIZE];
    let n = read_full(&mut r, &mut raw_header, "reading the NIfTI header")?;
    let header = Header::from_bytes(&raw_header[..n])?;
    let dtype = header.data_type()?;
    let dims = header.volume_dims()?;
    let count = limits.check_voxels(dims)?;
    let data_bytes = count.checked_mul(dtype.size() as u64).ok_or_else(|| {
        ImagingError::LimitExceeded(format!("{count} voxels of {dtype:?} overflow"))
    })?;
    let offset = vox_offset(&header)?;
    let extension_bytes = offset - DEFAULT_VOX_OFFSET as u64;
    if extension_bytes > limits.max_extension_bytes {
        return Err(ImagingError::LimitExceeded(format!(
            "{extension_bytes} bytes of header extensions (vox_offset {offset}) is more than \
             the limit of {}",
            limits.max_extension_bytes
        )));
    }
    limits.check_decompressed(offset.saturating_add(data_bytes))?;
    let affine = header.best_affine()?;
    let capacity_hint = match source {
        Source::Raw(Some(len)) => {
            let got = len.saturating_sub(offset);
            if got < data_bytes {
                return Err(ImagingError::Truncated {
                    expected: data_bytes,
                    got,
                });
            }
            count
        }
        Source::Gzip(Some(len)) => {
            limits.check_gzip_ratio(len, offset.saturating_add(data_bytes))?;
            len.saturating_mul(limits.max_gzip_ratio.min(Limits::DEFAULT_MAX_GZIP_RATIO))
                / dtype.size() as u64
        }
        Source::Raw(None) | Source::Gzip(None) => 1 << 24,
    };
    let to_skip = offset - HEADER_SIZE as u64;
    let skipped = skip(&mut r, to_skip)?;
    if skipped < to_skip {
        return Err(ImagingError::nifti(format!(
            "the file ends at byte {}, before the voxel data at vox_offset {offset}",
            HEADER_SIZE as u64 + skipped
        )));
    }
    let scaling = header
        .slope_inter()
        .map(|(slope, inter)| Scaling { slope, inter });
    let (data, non_finite) = read_samples(
        &mut r,
        dtype,
        header.big_endian,
        scaling,
        count,
        capacity_hint,
    )?;
    Volume::from_parts(dims, data, affine, dtype, Some(header), non_finite)
}
