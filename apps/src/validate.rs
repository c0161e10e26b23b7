//! The one place that decides whether an image or a label may enter: every route that stores or
//! reads an image (upload, session, infer) goes through [`read_image`], every route that stores a
//! label through [`check_label`], and everything that pairs a label with its image (report,
//! scoring) through [`same_grid`].
//!
//! The readers themselves refuse unreadable files, unsupported formats and a singular or
//! non-finite voxel-to-world matrix; this module adds the rules that concern content: no NaN or
//! infinite voxel, and a label on exactly its image's grid.

use std::path::Path;

use ferrolabel_imaging::{read_grid, read_volume, Grid, Limits, Volume};

use crate::error::{AppError, Result};

/// `"3 NaN and 0 infinite of 512 voxels"`.
fn non_finite_counts(v: &Volume) -> String {
    let nan = v.data.iter().filter(|x| x.is_nan()).count();
    let inf = v.data.iter().filter(|x| x.is_infinite()).count();
    format!("{nan} NaN and {inf} infinite of {} voxels", v.len())
}

/// Reads an image and refuses it ([`AppError::BadImage`], 422) unless it is a readable 3-D
/// scalar NIfTI-1 or NRRD file with an invertible geometry and only finite voxel values.
pub fn read_image(path: &Path, limits: &Limits) -> Result<Volume> {
    if path.is_dir() {
        return Err(AppError::BadImage(
            "the image is a folder (DICOM series are not supported; upload a NIfTI or NRRD file)"
                .into(),
        ));
    }
    let vol = read_volume(path, limits).map_err(|e| AppError::BadImage(e.to_string()))?;
    if vol.has_non_finite() {
        return Err(AppError::BadImage(format!(
            "the image has NaN or infinite voxels ({})",
            non_finite_counts(&vol)
        )));
    }
    Ok(vol)
}

/// Refuses ([`AppError::BadLabel`], 422) a label that is not on its image's grid: other
/// dimensions, or an affine that differs by more than [`ferrolabel_imaging::GRID_TOLERANCE`].
/// The message names both grids.
pub fn same_grid(image: &Grid, label: &Grid) -> Result<()> {
    if image.matches(label) {
        Ok(())
    } else {
        Err(AppError::BadLabel(format!(
            "the label is not on its image's grid: label {label}; image {image}"
        )))
    }
}

/// Checks a label file before it is stored for the image at `image`: readable as NIfTI-1 or
/// NRRD, finite values, and on the image's grid (the image's header alone is read for NIfTI).
pub fn check_label(image: &Path, label: &Path, limits: &Limits) -> Result<()> {
    let lab = read_volume(label, limits)
        .map_err(|e| AppError::BadLabel(format!("cannot read label: {e}")))?;
    if lab.has_non_finite() {
        return Err(AppError::BadLabel(format!(
            "cannot read label: it has NaN or infinite values ({})",
            non_finite_counts(&lab)
        )));
    }
    let img = read_grid(image, limits).map_err(|e| AppError::BadImage(e.to_string()))?;
    same_grid(&img, &Grid::of(&lab))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_names_both_grids() {
        let image = Grid {
            dims: [4, 4, 4],
            affine: ferrolabel_imaging::affine::IDENTITY,
        };
        let mut label = image;
        label.dims = [4, 4, 5];
        let msg = same_grid(&image, &label).unwrap_err().to_string();
        assert!(msg.contains("label dims 4 x 4 x 5"), "{msg}");
        assert!(msg.contains("image dims 4 x 4 x 4"), "{msg}");
        assert!(same_grid(&image, &image).is_ok());
    }
}
