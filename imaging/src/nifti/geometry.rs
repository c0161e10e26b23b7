//! The affines a NIfTI-1 header encodes (sform, qform, nibabel's fallback) and setting them.

use super::header::Header;
use crate::affine::{self, Affine, Quaternion};
use crate::error::{ImagingError, Result};

impl Header {
    /// Sets sform (rows of `affine`) and qform (its quaternion decomposition), both with
    /// code 1, and `pixdim[0..=3]` (qfac and voxel sizes).
    pub fn set_affine(&mut self, affine: &Affine) -> Result<()> {
        if !affine::is_finite(affine) {
            return Err(ImagingError::InvalidArgument(
                "the affine has a non-finite entry".into(),
            ));
        }
        let row = |r: usize| std::array::from_fn(|c| affine[r][c] as f32);
        self.srow_x = row(0);
        self.srow_y = row(1);
        self.srow_z = row(2);
        let q = affine::affine_to_quaternion(affine);
        self.quatern_b = q.b as f32;
        self.quatern_c = q.c as f32;
        self.quatern_d = q.d as f32;
        self.qoffset_x = q.offset[0] as f32;
        self.qoffset_y = q.offset[1] as f32;
        self.qoffset_z = q.offset[2] as f32;
        self.pixdim[0] = q.qfac as f32;
        for n in 0..3 {
            self.pixdim[n + 1] = q.pixdim[n] as f32;
        }
        self.qform_code = 1;
        self.sform_code = 1;
        Ok(())
    }

    /// The sform affine: the rows `srow_x`, `srow_y`, `srow_z`.
    pub fn sform_affine(&self) -> Affine {
        let row = |r: &[f32; 4]| r.map(f64::from);
        [
            row(&self.srow_x),
            row(&self.srow_y),
            row(&self.srow_z),
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    /// The qform affine from the quaternion fields, `pixdim[0]` (qfac) and `pixdim[1..=3]`.
    pub fn qform_affine(&self) -> Affine {
        affine::quaternion_to_affine(&Quaternion {
            b: self.quatern_b.into(),
            c: self.quatern_c.into(),
            d: self.quatern_d.into(),
            qfac: self.pixdim[0].into(),
            pixdim: [
                self.pixdim[1].into(),
                self.pixdim[2].into(),
                self.pixdim[3].into(),
            ],
            offset: [
                self.qoffset_x.into(),
                self.qoffset_y.into(),
                self.qoffset_z.into(),
            ],
        })
    }

    /// nibabel's fallback ("base") affine when neither form is set: voxel sizes
    /// `|pixdim[1..=3]|` (0 or non-finite counts as 1) on the diagonal, x flipped, and the
    /// centre voxel `(dim - 1) / 2` at the world origin.
    pub fn base_affine(&self) -> Affine {
        let mut a = affine::IDENTITY;
        for (n, row) in a.iter_mut().take(3).enumerate() {
            let size = f64::from(self.pixdim[n + 1]).abs();
            let size = if size > 0.0 && size.is_finite() {
                size
            } else {
                1.0
            };
            let zoom = if n == 0 { -size } else { size };
            let centre = (f64::from(self.dim[n + 1].max(1)) - 1.0) / 2.0;
            row[n] = zoom;
            row[3] = -centre * zoom;
        }
        a
    }

    /// The affine nibabel uses: sform if `sform_code > 0`, else qform if `qform_code > 0`,
    /// else [`Header::base_affine`]. Non-finite entries are an error, and so is a singular
    /// matrix ([`ImagingError::SingularGeometry`]): an sform with dependent axes, or no form
    /// at all and a voxel size of 0 or not finite (nibabel would silently take 1 mm).
    pub fn best_affine(&self) -> Result<Affine> {
        let (a, which) = if self.sform_code > 0 {
            (self.sform_affine(), "sform")
        } else if self.qform_code > 0 {
            (self.qform_affine(), "qform")
        } else {
            if let Some(n) =
                (1..=3).find(|&n| !(self.pixdim[n] != 0.0 && self.pixdim[n].is_finite()))
            {
                return Err(ImagingError::SingularGeometry(format!(
                    "voxel size pixdim[{n}] is {} and neither qform nor sform is set",
                    self.pixdim[n]
                )));
            }
            (self.base_affine(), "pixdim")
        };
        if !affine::is_finite(&a) {
            return Err(ImagingError::nifti(format!(
                "the {which} affine has a non-finite entry"
            )));
        }
        if let Some(why) = affine::singular_reason(&a) {
            return Err(ImagingError::SingularGeometry(format!(
                "{which} affine: {why}"
            )));
        }
        Ok(a)
    }
}
