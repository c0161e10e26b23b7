//! The real TotalSegmentator CT and segmentation in `data/totalseg/` read as expected.

use std::path::Path;

use ferrolabel_imaging::{
    encode_label_nifti, read_nifti, read_nifti_bytes, read_volume, DataType, Limits,
};

const CT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/totalseg/example_ct.nii.gz"
);
const CT_SM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/totalseg/example_ct_sm.nii.gz"
);
const SEG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/totalseg/example_seg.nii.gz"
);

const AFFINE: [[f64; 4]; 4] = [
    [3.0, 0.0, 0.0, -177.95632934570312],
    [0.0, 3.0, 0.0, 11.319000244140625],
    [0.0, 0.0, 3.0, 94.3017578125],
    [0.0, 0.0, 0.0, 1.0],
];

#[test]
fn example_ct_reads_with_its_grid() {
    let v = read_nifti(Path::new(CT), &Limits::default()).unwrap();
    assert_eq!(v.dims, [122, 101, 112]);
    assert_eq!(v.data.len(), 122 * 101 * 112);
    assert_eq!(v.source_dtype, DataType::I32);
    assert_eq!(v.affine, AFFINE);
    assert_eq!(v.spacing(), [3.0, 3.0, 3.0]);
    assert!(!v.has_non_finite());
    let (min, max) = v
        .data
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(
        (-1300.0..-900.0).contains(&min) && max > 1000.0,
        "HU range {min}..{max}"
    );
    let bytes = std::fs::read(CT).unwrap();
    assert_eq!(read_nifti_bytes(&bytes, &Limits::default()).unwrap(), v);
}

#[test]
fn small_ct_and_its_segmentation_share_a_grid() {
    let ct = read_volume(Path::new(CT_SM), &Limits::default()).unwrap();
    assert_eq!(ct.dims, [122, 101, 30]);
    assert_eq!(ct.source_dtype, DataType::I16);
    // The segmentation has header extensions (vox_offset 13168).
    let seg = read_volume(Path::new(SEG), &Limits::default()).unwrap();
    assert_eq!(seg.header.as_ref().unwrap().vox_offset, 13168.0);
    assert_eq!((seg.dims, seg.affine), (ct.dims, ct.affine));
    assert_eq!(seg.source_dtype, DataType::U8);
    assert!(seg
        .data
        .iter()
        .all(|&l| l.fract() == 0.0 && (0.0..=117.0).contains(&l)));
    // Writing the segmentation back on the CT's header reproduces it.
    let labels: Vec<u8> = seg.data.iter().map(|&l| l as u8).collect();
    let bytes = encode_label_nifti(&labels, ct.header.as_ref().unwrap(), true).unwrap();
    let back = read_nifti_bytes(&bytes, &Limits::default()).unwrap();
    assert_eq!(
        (back.dims, back.affine, &back.data),
        (seg.dims, seg.affine, &seg.data)
    );
}
