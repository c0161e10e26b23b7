//! Writing NIfTI-1 images: uint8/uint16 label maps on an input's exact grid, and `f32`
//! volumes with a given affine.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::header::{Header, DEFAULT_VOX_OFFSET, HEADER_SIZE, MAGIC_SINGLE};
use crate::affine::Affine;
use crate::dtype::DataType;
use crate::error::{ImagingError, Result};

/// Encodes a single-file NIfTI-1 image: `header` (as little-endian, with `sizeof_hdr` 348,
/// `vox_offset` 352, magic `"n+1\0"` and no extensions) followed by `data`, the voxel bytes
/// in little-endian order. Gzip-compressed when `gzip` is true.
///
/// `data` must hold exactly the voxels the header's `dim`/`datatype` declare.
pub fn encode_nifti(header: &Header, data: &[u8], gzip: bool) -> Result<Vec<u8>> {
    let dtype = header.data_type()?;
    let [nx, ny, nz] = header.volume_dims()?;
    let want = (nx as u64) * (ny as u64) * (nz as u64) * dtype.size() as u64;
    if data.len() as u64 != want {
        return Err(ImagingError::InvalidArgument(format!(
            "{} bytes of voxel data do not fill a {nx} x {ny} x {nz} grid of {dtype:?} \
             ({want} bytes)",
            data.len()
        )));
    }
    let mut h = header.clone();
    h.sizeof_hdr = HEADER_SIZE as i32;
    h.vox_offset = DEFAULT_VOX_OFFSET as f32;
    h.magic = MAGIC_SINGLE;
    h.big_endian = false;
    let head = h.to_bytes();
    let extension_flag = [0u8; 4];
    let context = "compressing the NIfTI image";
    if gzip {
        let mut enc = GzEncoder::new(
            Vec::with_capacity(data.len() / 4 + 1024),
            Compression::default(),
        );
        enc.write_all(&head)
            .and_then(|_| enc.write_all(&extension_flag))
            .and_then(|_| enc.write_all(data))
            .map_err(|e| ImagingError::io(context, e))?;
        enc.finish().map_err(|e| ImagingError::io(context, e))
    } else {
        let mut out = Vec::with_capacity(DEFAULT_VOX_OFFSET + data.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(&extension_flag);
        out.extend_from_slice(data);
        Ok(out)
    }
}

/// The header of a label map on `like`'s grid: every field of `like` is kept (dims, pixdim,
/// qform/sform codes and parameters, units, descriptions) except those that describe the
/// voxel values: 3-D `dim`, `datatype`/`bitpix`, `scl_slope` 1, `scl_inter` 0, `cal_min` 0,
/// `cal_max` the largest label.
fn label_header(like: &Header, dtype: DataType, count: usize, max: f32) -> Result<Header> {
    let dims = like.volume_dims()?;
    let want = dims.iter().map(|&d| d as u64).product::<u64>();
    if count as u64 != want {
        return Err(ImagingError::InvalidArgument(format!(
            "{count} labels do not fill the {} x {} x {} grid of the reference header",
            dims[0], dims[1], dims[2]
        )));
    }
    let mut h = like.clone();
    h.dim[0] = 3;
    for d in &mut h.dim[4..] {
        *d = 1;
    }
    h.datatype = dtype.nifti_code();
    h.bitpix = (dtype.size() * 8) as i16;
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    h.cal_min = 0.0;
    h.cal_max = max;
    Ok(h)
}

/// Encodes a uint8 label map on exactly the grid of `like` (the header of the image it was
/// computed from); see [`write_label_nifti`].
pub fn encode_label_nifti(labels: &[u8], like: &Header, gzip: bool) -> Result<Vec<u8>> {
    let max = labels.iter().copied().max().unwrap_or(0);
    let h = label_header(like, DataType::U8, labels.len(), f32::from(max))?;
    encode_nifti(&h, labels, gzip)
}

/// Encodes a uint16 label map (for more than 255 classes) on exactly the grid of `like`.
pub fn encode_label_nifti_u16(labels: &[u16], like: &Header, gzip: bool) -> Result<Vec<u8>> {
    let max = labels.iter().copied().max().unwrap_or(0);
    let h = label_header(like, DataType::U16, labels.len(), f32::from(max))?;
    let bytes: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode_nifti(&h, &bytes, gzip)
}

/// Encodes an `f32` volume with sform = qform = `affine` (codes 1), as MONAI's writer does.
pub fn encode_nifti_f32(
    data: &[f32],
    dims: [usize; 3],
    affine: &Affine,
    gzip: bool,
) -> Result<Vec<u8>> {
    let h = Header::new_3d(dims, DataType::F32, affine)?;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode_nifti(&h, &bytes, gzip)
}

/// Whether a path asks for gzip: its name ends with `.gz` (any case).
fn wants_gzip(path: &Path) -> bool {
    path.to_string_lossy().to_ascii_lowercase().ends_with(".gz")
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)
        .map_err(|e| ImagingError::io(format!("writing {}", path.display()), e))
}

/// Writes a uint8 label map on exactly the grid of `like`: same `dim` (as 3-D), `pixdim`,
/// qform/sform codes and parameters and `xyzt_units`; `datatype` 2, `scl_slope` 1,
/// `scl_inter` 0, `cal_min` 0, `cal_max` the largest label, `vox_offset` 352, no extensions.
/// Gzip-compressed when the path ends with `.gz`. Not atomic: write to a temporary name and
/// rename if readers may look at the path meanwhile.
pub fn write_label_nifti(path: &Path, labels: &[u8], like: &Header) -> Result<()> {
    write_file(path, &encode_label_nifti(labels, like, wants_gzip(path))?)
}

/// [`write_label_nifti`] for uint16 labels (datatype 512).
pub fn write_label_nifti_u16(path: &Path, labels: &[u16], like: &Header) -> Result<()> {
    write_file(
        path,
        &encode_label_nifti_u16(labels, like, wants_gzip(path))?,
    )
}

/// Writes an `f32` volume with sform = qform = `affine` (codes 1); gzip when the path ends
/// with `.gz`. Meant for fixtures and debugging output.
pub fn write_nifti_f32(path: &Path, data: &[f32], dims: [usize; 3], affine: &Affine) -> Result<()> {
    write_file(
        path,
        &encode_nifti_f32(data, dims, affine, wants_gzip(path))?,
    )
}
