//! [`Volume`]: a 3-D scalar image as `f32` voxels on a grid placed in world space.

use crate::affine::{self, Affine};
use crate::dtype::DataType;
use crate::error::{ImagingError, Result};
use crate::nifti::Header;

/// A 3-D scalar image: `f32` voxels in NIfTI order (x fastest, then y, then z) and the
/// voxel-to-world affine (RAS+, millimetres).
///
/// Voxel `(i, j, k)` is `data[i + nx * (j + ny * k)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Grid size `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Voxel values, `nx * ny * nz` of them, x fastest.
    pub data: Vec<f32>,
    /// Voxel index -> world (RAS+, mm).
    pub affine: Affine,
    /// The voxel type stored in the file (before scaling and conversion to `f32`).
    pub source_dtype: DataType,
    /// The NIfTI header the volume was read with (`None` for NRRD or built volumes); pass it
    /// to the label writers to write a result on exactly the same grid.
    pub header: Option<Header>,
    /// Whether `data` held a NaN or infinity when the volume was read or built.
    non_finite: bool,
}

/// The name the NIfTI readers' result goes by; it is a plain [`Volume`].
pub type NiftiVolume = Volume;

impl Volume {
    /// Builds a volume from `f32` data, checking that the length matches the grid and that the
    /// affine is finite and invertible.
    pub fn new(dims: [usize; 3], data: Vec<f32>, affine: Affine) -> Result<Volume> {
        let non_finite = data.iter().any(|v| !v.is_finite());
        Volume::from_parts(dims, data, affine, DataType::F32, None, non_finite)
    }

    /// Assembles a volume whose non-finite flag the reader already computed.
    pub(crate) fn from_parts(
        dims: [usize; 3],
        data: Vec<f32>,
        affine: Affine,
        source_dtype: DataType,
        header: Option<Header>,
        non_finite: bool,
    ) -> Result<Volume> {
        let want = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if want != Some(data.len()) {
            return Err(ImagingError::InvalidArgument(format!(
                "{} values do not fill a {} x {} x {} grid",
                data.len(),
                dims[0],
                dims[1],
                dims[2]
            )));
        }
        if !affine::is_finite(&affine) {
            return Err(ImagingError::InvalidArgument(
                "the affine has a non-finite entry".into(),
            ));
        }
        if let Some(why) = affine::singular_reason(&affine) {
            return Err(ImagingError::SingularGeometry(why));
        }
        Ok(Volume {
            dims,
            data,
            affine,
            source_dtype,
            header,
            non_finite,
        })
    }

    /// Whether any voxel was NaN or infinite when the volume was read or built (computed
    /// during conversion; not updated if `data` is changed afterwards).
    pub fn has_non_finite(&self) -> bool {
        self.non_finite
    }

    /// Voxel spacing in mm: the column norms of the affine.
    pub fn spacing(&self) -> [f64; 3] {
        affine::column_norms(&self.affine)
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the volume has no voxels (never true for a volume that was read from a file).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Index of voxel `(i, j, k)` in `data`, or `None` outside the grid.
    pub fn index(&self, i: usize, j: usize, k: usize) -> Option<usize> {
        let [nx, ny, nz] = self.dims;
        (i < nx && j < ny && k < nz).then(|| i + nx * (j + ny * k))
    }

    /// Value of voxel `(i, j, k)`, or `None` outside the grid.
    pub fn get(&self, i: usize, j: usize, k: usize) -> Option<f32> {
        self.index(i, j, k).map(|n| self.data[n])
    }
}
