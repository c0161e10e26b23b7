//! Placing a Segmentation's frames on a series: its grid checked against the series', each
//! frame's slice found by position or by the source instance it references.

use std::collections::HashMap;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::read::{mismatch, seg_error};
use crate::attrs::{integer, items, numbers, text};
use crate::error::{DicomError, Result};
use crate::geometry::{cross, dot};
use crate::series::SeriesInfo;

/// The item of functional group `group` for frame `frame`: per-frame, else shared.
pub(super) fn group(obj: &InMemDicomObject, frame: usize, group: Tag) -> Option<&InMemDicomObject> {
    items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .get(frame)
        .and_then(|f| items(f, group).first())
        .or_else(|| {
            items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
                .first()
                .and_then(|s| items(s, group).first())
        })
}

/// Where frames land on the series: slice positions along the normal and each source
/// instance (and frame) → slice.
pub(super) struct Grid<'a> {
    series: &'a SeriesInfo,
    normal: [f64; 3],
    /// `(position · normal, k)` sorted by the first.
    along: Vec<(f64, usize)>,
    by_instance: HashMap<(&'a str, Option<u32>), usize>,
    tolerance: f64,
}

impl<'a> Grid<'a> {
    pub(super) fn new(series: &'a SeriesInfo) -> Grid<'a> {
        let o = series.orientation;
        let normal = cross([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        let mut along: Vec<(f64, usize)> = series
            .slices
            .iter()
            .enumerate()
            .map(|(k, s)| (dot(s.position, normal), k))
            .collect();
        along.sort_by(|a, b| a.0.total_cmp(&b.0));
        let by_instance = series
            .slices
            .iter()
            .enumerate()
            .map(|(k, s)| ((s.sop_instance_uid.as_str(), s.frame_number), k))
            .collect();
        let finest = series.pixel_spacing[0]
            .min(series.pixel_spacing[1])
            .min(series.slice_spacing);
        Grid {
            series,
            normal,
            along,
            by_instance,
            tolerance: (0.05 * finest).max(0.01),
        }
    }

    /// The slice at ImagePositionPatient `p`, which must coincide with a slice's position.
    fn slice_at(&self, p: [f64; 3], frame: usize) -> Result<usize> {
        let s = dot(p, self.normal);
        let i = self.along.partition_point(|(x, _)| *x < s);
        let candidates = [i.checked_sub(1), Some(i)];
        let best = candidates
            .iter()
            .flatten()
            .filter_map(|&i| self.along.get(i))
            .map(|&(_, k)| {
                let q = self.series.slices[k].position;
                let d =
                    ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt();
                (d, k)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((d, k)) if d <= self.tolerance => Ok(k),
            Some((d, _)) => Err(mismatch(format!(
                "frame {} at ImagePositionPatient {p:?} lies on no slice of the series \
                 (the nearest is {d:.3} mm away)",
                frame + 1
            ))),
            None => Err(mismatch("the series has no slice")),
        }
    }

    /// The slice of frame `frame`: by its PlanePositionSequence, else by the source instance
    /// its DerivationImageSequence references.
    pub(super) fn slice_of(&self, obj: &InMemDicomObject, frame: usize) -> Result<usize> {
        if let Some(pos) = group(obj, frame, tags::PLANE_POSITION_SEQUENCE) {
            let p = numbers(pos, tags::IMAGE_POSITION_PATIENT)
                .filter(|v| v.len() >= 3)
                .ok_or_else(|| {
                    seg_error(format!("frame {}: bad ImagePositionPatient", frame + 1))
                })?;
            return self.slice_at([p[0], p[1], p[2]], frame);
        }
        let source = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .get(frame)
            .and_then(|f| items(f, tags::DERIVATION_IMAGE_SEQUENCE).first())
            .and_then(|d| items(d, tags::SOURCE_IMAGE_SEQUENCE).first())
            .ok_or_else(|| DicomError::MissingAttribute {
                file: format!("segmentation frame {}", frame + 1),
                attribute: "PlanePositionSequence or SourceImageSequence",
            })?;
        let uid = text(source, tags::REFERENCED_SOP_INSTANCE_UID).unwrap_or_default();
        let number = integer(source, tags::REFERENCED_FRAME_NUMBER).map(|n| n as u32);
        self.by_instance
            .get(&(uid.as_str(), number))
            .or_else(|| self.by_instance.get(&(uid.as_str(), None)))
            .copied()
            .ok_or_else(|| {
                mismatch(format!(
                    "frame {} references instance {uid} (frame {number:?}), which is not in \
                     the series",
                    frame + 1
                ))
            })
    }
}

/// Checks that the Segmentation's grid is the series': frame of reference, rows and columns,
/// orientation and pixel spacing.
pub(super) fn check_grid(obj: &InMemDicomObject, series: &SeriesInfo) -> Result<()> {
    let frame_of_reference =
        text(obj, tags::FRAME_OF_REFERENCE_UID).ok_or(DicomError::MissingAttribute {
            file: "segmentation".into(),
            attribute: "FrameOfReferenceUID",
        })?;
    if frame_of_reference != series.frame_of_reference_uid {
        return Err(mismatch(format!(
            "its FrameOfReferenceUID {frame_of_reference} is not the series' {}",
            series.frame_of_reference_uid
        )));
    }
    let (rows, cols) = (
        integer(obj, tags::ROWS).unwrap_or(0),
        integer(obj, tags::COLUMNS).unwrap_or(0),
    );
    if rows != series.rows as i64 || cols != series.columns as i64 {
        return Err(mismatch(format!(
            "its frames are {cols} x {rows}, the series' slices {} x {}",
            series.columns, series.rows
        )));
    }
    if let Some(o) = group(obj, 0, tags::PLANE_ORIENTATION_SEQUENCE)
        .and_then(|g| numbers(g, tags::IMAGE_ORIENTATION_PATIENT))
    {
        if o.len() < 6
            || o.iter()
                .zip(&series.orientation)
                .any(|(a, b)| (a - b).abs() > 1e-3)
        {
            return Err(mismatch(format!(
                "its ImageOrientationPatient {o:?} is not the series' {:?}",
                series.orientation
            )));
        }
    }
    if let Some(s) =
        group(obj, 0, tags::PIXEL_MEASURES_SEQUENCE).and_then(|g| numbers(g, tags::PIXEL_SPACING))
    {
        let off = |a: f64, b: f64| (a - b).abs() > 1e-3 * b.abs().max(1e-3);
        if s.len() < 2 || off(s[0], series.pixel_spacing[0]) || off(s[1], series.pixel_spacing[1]) {
            return Err(mismatch(format!(
                "its PixelSpacing {s:?} is not the series' {:?}",
                series.pixel_spacing
            )));
        }
    }
    Ok(())
}
