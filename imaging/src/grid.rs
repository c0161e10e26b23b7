//! [`Grid`]: where an image's voxels lie (dimensions and voxel-to-world affine), read without
//! the voxel data, and the rule by which a label belongs to an image.

use std::fmt;
use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::affine::Affine;
use crate::dtype::read_full;
use crate::error::{ImagingError, Result};
use crate::limits::Limits;
use crate::nifti::{Header, GZIP_MAGIC, HEADER_SIZE};
use crate::volume::Volume;
use crate::{detect_format, read_nrrd, ImageFormat};

/// A voxel grid: size and voxel-to-world affine (RAS+, mm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Voxel index -> world.
    pub affine: Affine,
}

/// How far two affines may differ entry by entry and still place voxels in the same spot:
/// `|a - b| <= GRID_TOLERANCE * (1 + |a|)`, i.e. 0.1 % (float32 headers, qform round trips and
/// NRRD/NIfTI conversions stay far below it; a shifted or rescaled label does not).
pub const GRID_TOLERANCE: f64 = 1e-3;

impl Grid {
    /// The grid of a volume.
    pub fn of(v: &Volume) -> Grid {
        Grid {
            dims: v.dims,
            affine: v.affine,
        }
    }

    /// Whether `other` has the same dimensions and an affine within [`GRID_TOLERANCE`].
    pub fn matches(&self, other: &Grid) -> bool {
        self.dims == other.dims
            && self
                .affine
                .iter()
                .flatten()
                .zip(other.affine.iter().flatten())
                .all(|(a, b)| (a - b).abs() <= GRID_TOLERANCE * (1.0 + a.abs()))
    }
}

fn num(v: f64) -> String {
    // 4 decimals are enough to see what differs; no negative zero
    let r = (v * 1e4).round() / 1e4 + 0.0;
    format!("{r}")
}

impl fmt::Display for Grid {
    /// `dims 48 x 48 x 24, affine [[2, 0, 0, -48], [0, 2, 0, -48], [0, 0, 2, -24]]` (the
    /// constant last row left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [x, y, z] = self.dims;
        let rows: Vec<String> = self.affine[..3]
            .iter()
            .map(|r| format!("[{}]", r.map(num).join(", ")))
            .collect();
        write!(f, "dims {x} x {y} x {z}, affine [{}]", rows.join(", "))
    }
}

/// Reads the grid of a NIfTI-1 or NRRD file. For NIfTI only the header is read (decompressing
/// its first 348 bytes); for NRRD the whole file is read. Size limits, a malformed header and a
/// singular geometry are errors, as for the full readers.
pub fn read_grid(path: &Path, limits: &Limits) -> Result<Grid> {
    let context = || format!("reading {}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| ImagingError::io(context(), e))?;
    let mut head = [0u8; 4];
    let n = read_full(&mut file, &mut head, "reading the file's first bytes")?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match detect_format(&head[..n], &name) {
        Some(ImageFormat::Nrrd) => read_nrrd(path, limits).map(|v| Grid::of(&v)),
        Some(ImageFormat::Nifti) => {
            let file = std::fs::File::open(path).map_err(|e| ImagingError::io(context(), e))?;
            let mut raw = [0u8; HEADER_SIZE];
            let got = if head[..n].starts_with(&GZIP_MAGIC) {
                read_full(
                    &mut MultiGzDecoder::new(file),
                    &mut raw,
                    "reading the NIfTI header",
                )?
            } else {
                read_full(
                    &mut file.take(HEADER_SIZE as u64),
                    &mut raw,
                    "reading the NIfTI header",
                )?
            };
            let header = Header::from_bytes(&raw[..got])?;
            let dims = header.volume_dims()?;
            limits.check_voxels(dims)?;
            Ok(Grid {
                dims,
                affine: header.best_affine()?,
            })
        }
        None => Err(ImagingError::Unsupported(format!(
            "unsupported image format: {name} (expected NIfTI .nii/.nii.gz or NRRD .nrrd)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affine::IDENTITY;

    #[test]
    fn grids_match_within_the_tolerance_only() {
        let a = Grid {
            dims: [4, 5, 6],
            affine: [
                [2.0, 0.0, 0.0, -100.0],
                [0.0, 2.0, 0.0, 50.0],
                [0.0, 0.0, 3.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        };
        let mut b = a;
        b.affine[0][3] += 1e-5;
        assert!(a.matches(&b));
        b.affine[0][3] = -99.0; // a 1 mm shift
        assert!(!a.matches(&b));
        let mut c = a;
        c.dims[2] = 7;
        assert!(!a.matches(&c));
        let d = Grid {
            dims: a.dims,
            affine: IDENTITY,
        };
        assert!(!a.matches(&d));
        assert_eq!(
            a.to_string(),
            "dims 4 x 5 x 6, affine [[2, 0, 0, -100], [0, 2, 0, 50], [0, 0, 3, 0]]"
        );
    }
}
