//! Writing NIfTI-1: label maps keep the input's grid exactly; f32 volumes keep their affine.

mod common;

use std::io::Read;

use common::{err_msg, file_bytes, header};
use ferrolabel_imaging::affine::{self, Affine};
use ferrolabel_imaging::nifti::encode_nifti;
use ferrolabel_imaging::{
    encode_label_nifti, encode_nifti_f32, read_nifti, read_nifti_bytes, write_label_nifti,
    write_label_nifti_u16, write_nifti_f32, DataType, Header, Limits,
};

/// The raw header of a written file (plain or gzip).
fn raw_header(bytes: &[u8]) -> Header {
    let mut plain = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut plain)
            .unwrap();
    } else {
        plain = bytes.to_vec();
    }
    assert_eq!(&plain[348..352], &[0, 0, 0, 0], "no extensions");
    Header::from_bytes(&plain).unwrap()
}

/// A header with every grid field set to something unusual: oblique qform and sform that
/// disagree, odd codes, 4-D singleton, units, descriptions, big-endian source.
fn odd_header() -> Header {
    let mut h = header([5, 4, 3], DataType::I16);
    h.dim[0] = 4;
    h.dim[4] = 1;
    h.pixdim = [-1.0, 0.7, 0.8, 2.5, 1.3, 0.0, 0.0, 0.0];
    h.qform_code = 1;
    h.sform_code = 4;
    h.quatern_b = 0.1;
    h.quatern_c = -0.2;
    h.quatern_d = 0.3;
    h.qoffset_x = -90.123;
    h.qoffset_y = 126.5;
    h.qoffset_z = -72.25;
    h.srow_x = [-0.7, 0.01, 0.0, 90.1];
    h.srow_y = [0.0, 0.8, -0.02, -126.7];
    h.srow_z = [0.003, 0.0, 2.5, -72.0];
    h.xyzt_units = 10;
    h.scl_slope = 3.0;
    h.scl_inter = -7.0;
    h.descrip[..7].copy_from_slice(b"odd one");
    h.intent_name[..3].copy_from_slice(b"abc");
    h.dim_info = 57;
    h.slice_duration = 0.5;
    h.big_endian = true;
    h
}

#[test]
fn label_map_keeps_the_input_grid_exactly() {
    let like = odd_header();
    let input = read_nifti_bytes(&file_bytes(&like, &[0u8; 120]), &Limits::default()).unwrap();
    let like = input.header.clone().unwrap();
    let labels: Vec<u8> = (0..60).map(|n| (n % 7) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    for name in ["seg.nii.gz", "seg.nii", "SEG.NII.GZ"] {
        let path = dir.path().join(name);
        write_label_nifti(&path, &labels, &like).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes.starts_with(&[0x1f, 0x8b]),
            name.to_lowercase().ends_with(".gz"),
            "{name}"
        );
        let got = raw_header(&bytes);
        let mut want = like.clone();
        want.dim[0] = 3;
        want.datatype = 2;
        want.bitpix = 8;
        want.scl_slope = 1.0;
        want.scl_inter = 0.0;
        want.cal_min = 0.0;
        want.cal_max = 6.0;
        want.vox_offset = 352.0;
        want.big_endian = false;
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{name}");
        let back = read_nifti(&path, &Limits::default()).unwrap();
        assert_eq!(back.dims, input.dims);
        assert_eq!(back.affine, input.affine);
        assert_eq!(back.source_dtype, DataType::U8);
        assert_eq!(
            back.data,
            labels.iter().map(|&l| f32::from(l)).collect::<Vec<_>>()
        );
    }
    assert!(err_msg(encode_label_nifti(&labels[..59], &like, false)).contains("59 labels"));
}

#[test]
fn u16_labels() {
    let like = odd_header();
    let labels: Vec<u16> = (0..60).map(|n| n * 11).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.nii.gz");
    write_label_nifti_u16(&path, &labels, &like).unwrap();
    let back = read_nifti(&path, &Limits::default()).unwrap();
    assert_eq!(back.source_dtype, DataType::U16);
    assert_eq!(back.data[59], 649.0);
    let h = back.header.unwrap();
    assert_eq!((h.datatype, h.bitpix, h.cal_max), (512, 16, 649.0));
}

fn oblique() -> Affine {
    let (s, c) = 0.4f64.sin_cos();
    [
        [-0.9 * c, 0.0, 1.2 * s, 100.5],
        [0.0, 0.75, 0.0, -20.0],
        [-0.9 * s, 0.0, -1.2 * c, 33.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

#[test]
fn f32_writer_sets_sform_and_qform() {
    let dims = [4, 3, 2];
    let data: Vec<f32> = (0..24).map(|n| n as f32 * 0.5 - 3.0).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.nii");
    write_nifti_f32(&path, &data, dims, &oblique()).unwrap();
    let v = read_nifti(&path, &Limits::default()).unwrap();
    assert_eq!(v.data, data);
    let mut h = v.header.unwrap();
    assert_eq!(
        (h.sform_code, h.qform_code, h.datatype, h.xyzt_units),
        (1, 1, 16, 2)
    );
    assert_eq!(h.pixdim[0], 1.0, "a proper rotation");
    for (r, row) in v.affine.iter().enumerate().take(3) {
        for (c, x) in row.iter().enumerate() {
            assert_eq!(*x, f64::from(oblique()[r][c] as f32));
        }
    }
    // The qform alone gives the same grid to f32 precision.
    h.sform_code = 0;
    let q = h.best_affine().unwrap();
    for (a, b) in q.iter().flatten().zip(oblique().iter().flatten()) {
        assert!((a - b).abs() < 1e-5, "{q:?}");
    }
    assert!((affine::column_norms(&q)[2] - 1.2).abs() < 1e-6);
    let gz = encode_nifti_f32(&data, dims, &oblique(), true).unwrap();
    assert_eq!(
        read_nifti_bytes(&gz, &Limits::default()).unwrap().data,
        data
    );
    assert!(encode_nifti_f32(&data, [40000, 1, 1], &oblique(), false).is_err());
    assert!(encode_nifti_f32(&data[..5], dims, &oblique(), false).is_err());
}

#[test]
fn encode_nifti_checks_the_data_length() {
    let h = header([2, 2, 2], DataType::I16);
    assert!(encode_nifti(&h, &[0u8; 16], false).is_ok());
    assert!(err_msg(encode_nifti(&h, &[0u8; 15], false)).contains("15 bytes"));
}
