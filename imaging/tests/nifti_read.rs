//! Reading NIfTI-1 files: every dtype, scaling, affine selection, byte order, bad input.

mod common;

use common::{err_msg, file_bytes, gzip, header, le_i16};
use ferrolabel_imaging::affine::IDENTITY;
use ferrolabel_imaging::{read_nifti, read_nifti_bytes, DataType, ImagingError, Limits};

const DIMS: [usize; 3] = [3, 2, 2];

/// Raw little-endian bytes and the expected `f32` values for 12 voxels of each type.
fn samples(t: DataType) -> (Vec<u8>, Vec<f32>) {
    macro_rules! make {
        ($ty:ty, [$($v:expr),*]) => {{
            let vals: Vec<$ty> = [$($v as $ty),*].iter().copied().cycle().take(12).collect();
            (vals.iter().flat_map(|v| v.to_le_bytes()).collect(), vals.iter().map(|&v| v as f32).collect())
        }};
    }
    match t {
        DataType::U8 => make!(u8, [0, 1, 127, 255]),
        DataType::I8 => make!(i8, [-128, -1, 0, 127]),
        DataType::U16 => make!(u16, [0, 1000, 65535]),
        DataType::I16 => make!(i16, [-32768, -1024, 0, 3071, 32767]),
        DataType::U32 => make!(u32, [0, 16777217, u32::MAX]),
        DataType::I32 => make!(i32, [i32::MIN, -16777217, 0, 16777219, i32::MAX]),
        DataType::U64 => make!(u64, [0, 1u64 << 60, u64::MAX]),
        DataType::I64 => make!(i64, [i64::MIN, -3i64, 0, (1i64 << 53) + 1]),
        DataType::F32 => make!(
            f32,
            [-0.0f32, 1.5f32, f32::MAX, f32::MIN_POSITIVE, -1024.25f32]
        ),
        DataType::F64 => make!(f64, [0.1f64, -2.5e-40f64, 1e30f64, -7.0f64]),
    }
}

#[test]
fn every_dtype_round_trips_from_bytes_and_files() {
    let dir = tempfile::tempdir().unwrap();
    for t in DataType::ALL {
        let (raw, want) = samples(t);
        let bytes = file_bytes(&header(DIMS, t), &raw);
        for (name, content) in [
            ("a.nii", bytes.clone()),
            ("a.nii.gz", gzip(&bytes)),
            ("gz_named.nii", gzip(&bytes)),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &content).unwrap();
            for v in [
                read_nifti(&path, &Limits::default()).unwrap(),
                read_nifti_bytes(&content, &Limits::default()).unwrap(),
            ] {
                assert_eq!(v.dims, DIMS);
                assert_eq!(v.source_dtype, t);
                let got: Vec<u32> = v.data.iter().map(|x| x.to_bits()).collect();
                let exp: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, exp, "{t:?} {name}");
                assert!(!v.has_non_finite(), "{t:?}");
                assert_eq!(v.affine, IDENTITY);
                assert_eq!(v.spacing(), [1.0, 1.0, 1.0]);
            }
        }
    }
}

#[test]
fn voxel_order_is_x_fastest() {
    let dims = [4, 3, 2];
    let vals: Vec<i16> = (0..2)
        .flat_map(|k| (0..3).flat_map(move |j| (0..4).map(move |i| i + 10 * j + 100 * k)))
        .collect();
    let v = read_nifti_bytes(
        &file_bytes(&header(dims, DataType::I16), &le_i16(&vals)),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(v.get(3, 2, 1), Some(123.0));
    assert_eq!(v.get(1, 0, 1), Some(101.0));
    assert_eq!(v.index(1, 2, 0), Some(1 + 4 * 2));
    assert_eq!(v.get(4, 0, 0), None);
}

#[test]
fn non_finite_values_are_kept_and_flagged() {
    let vals = [
        f32::NAN,
        f32::INFINITY,
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
        6.0,
        7.0,
        8.0,
        9.0,
        10.0,
    ];
    let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let v = read_nifti_bytes(
        &file_bytes(&header(DIMS, DataType::F32), &raw),
        &Limits::default(),
    )
    .unwrap();
    assert!(v.has_non_finite());
    assert!(v.data[0].is_nan() && v.data[1] == f32::INFINITY);
    // 1e300 in float64 overflows float32 on conversion: flagged too.
    let raw: Vec<u8> = [1e300f64; 12]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let v = read_nifti_bytes(
        &file_bytes(&header(DIMS, DataType::F64), &raw),
        &Limits::default(),
    )
    .unwrap();
    assert!(v.has_non_finite());
}

#[test]
fn scaling_is_applied_in_f64() {
    let mut h = header(DIMS, DataType::U16);
    h.scl_slope = 0.5;
    h.scl_inter = -1024.3;
    let raw: Vec<u8> = [1000u16; 12].iter().flat_map(|v| v.to_le_bytes()).collect();
    let v = read_nifti_bytes(&file_bytes(&h, &raw), &Limits::default()).unwrap();
    // The header stores f32, so the intercept is f64::from(-1024.3f32), not the literal -1024.3.
    let want = (1000f64 * 0.5 + f64::from(-1024.3f32)) as f32;
    assert_eq!(v.data[0].to_bits(), want.to_bits());

    // i16 with slope 0.1: the f64 path must be taken even where f32 arithmetic would differ.
    let mut h = header(DIMS, DataType::I16);
    h.scl_slope = 0.1;
    h.scl_inter = 0.3;
    let raws: Vec<i16> = (0..12).map(|n| 12345 - 997 * n).collect();
    let v = read_nifti_bytes(&file_bytes(&h, &le_i16(&raws)), &Limits::default()).unwrap();
    let mut differs_from_f32 = false;
    for (got, &r) in v.data.iter().zip(&raws) {
        let want = (f64::from(r) * f64::from(0.1f32) + f64::from(0.3f32)) as f32;
        assert_eq!(got.to_bits(), want.to_bits(), "raw {r}");
        differs_from_f32 |= (f32::from(r) * 0.1f32 + 0.3f32).to_bits() != want.to_bits();
    }
    assert!(
        differs_from_f32,
        "the test values should tell f32 and f64 arithmetic apart"
    );
}

#[test]
fn slope_zero_nan_or_identity_means_no_scaling() {
    let raws: Vec<i16> = (0..12).map(|n| n * 100 - 500).collect();
    for (slope, inter) in [
        (0.0f32, 5.0f32),
        (f32::NAN, 5.0),
        (1.0, 0.0),
        (f32::INFINITY, 1.0),
    ] {
        let mut h = header(DIMS, DataType::I16);
        h.scl_slope = slope;
        h.scl_inter = inter;
        let v = read_nifti_bytes(&file_bytes(&h, &le_i16(&raws)), &Limits::default()).unwrap();
        assert_eq!(
            v.data,
            raws.iter().map(|&r| f32::from(r)).collect::<Vec<_>>(),
            "slope {slope}"
        );
    }
    // A NaN intercept with a valid slope counts as 0.
    let mut h = header(DIMS, DataType::I16);
    h.scl_slope = 2.0;
    h.scl_inter = f32::NAN;
    let v = read_nifti_bytes(&file_bytes(&h, &le_i16(&raws)), &Limits::default()).unwrap();
    assert_eq!(v.data[0], -1000.0);
    assert!(!v.has_non_finite());
}

#[test]
fn affine_selection_sform_then_qform_then_base() {
    let mut h = header([4, 5, 6], DataType::U8);
    h.pixdim[1..4].copy_from_slice(&[2.0, 3.0, 4.0]);
    h.sform_code = 2;
    h.srow_x = [0.0, -3.0, 0.0, 10.0];
    h.srow_y = [2.0, 0.0, 0.0, -20.0];
    h.srow_z = [0.0, 0.0, 4.0, 30.5];
    // qform: 90° about z (b = c = 0, d = sin 45°), qfac -1.
    h.qform_code = 1;
    h.quatern_b = 0.0;
    h.quatern_c = 0.0;
    h.quatern_d = std::f32::consts::FRAC_1_SQRT_2;
    h.pixdim[0] = -1.0;
    h.qoffset_x = 1.0;
    h.qoffset_y = 2.0;
    h.qoffset_z = 3.0;
    let data = vec![0u8; 120];
    let read = |h: &ferrolabel_imaging::Header| {
        read_nifti_bytes(&file_bytes(h, &data), &Limits::default())
            .unwrap()
            .affine
    };

    let sform = [
        [0.0, -3.0, 0.0, 10.0],
        [2.0, 0.0, 0.0, -20.0],
        [0.0, 0.0, 4.0, 30.5],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_eq!(read(&h), sform);

    h.sform_code = 0;
    let q = read(&h);
    let d = f64::from(std::f32::consts::FRAC_1_SQRT_2);
    let a = (1.0 - d * d).sqrt();
    // The NIfTI-1 formula, written out for this quaternion.
    let want = [
        [(a * a - d * d) * 2.0, -2.0 * a * d * 3.0, 0.0, 1.0],
        [2.0 * a * d * 2.0, (a * a - d * d) * 3.0, 0.0, 2.0],
        [0.0, 0.0, -(a * a + d * d) * 4.0, 3.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_eq!(q, want);
    assert!((q[1][0] - 2.0).abs() < 1e-6 && (q[0][1] + 3.0).abs() < 1e-6);

    h.qform_code = 0;
    let base = [
        [-2.0, 0.0, 0.0, 3.0],
        [0.0, 3.0, 0.0, -6.0],
        [0.0, 0.0, 4.0, -10.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_eq!(read(&h), base);

    h.sform_code = 1;
    h.srow_y[1] = f32::NAN;
    assert!(
        err_msg(read_nifti_bytes(&file_bytes(&h, &data), &Limits::default()))
            .contains("non-finite")
    );
}

#[test]
fn big_endian_files_are_read() {
    let mut h = header(DIMS, DataType::I16);
    h.big_endian = true;
    h.scl_slope = 2.0;
    h.sform_code = 1;
    h.srow_x = [1.5, 0.0, 0.0, -7.25];
    let raws: Vec<i16> = (0..12).map(|n| n * 1000 - 6000).collect();
    let raw: Vec<u8> = raws.iter().flat_map(|v| v.to_be_bytes()).collect();
    let v = read_nifti_bytes(&file_bytes(&h, &raw), &Limits::default()).unwrap();
    assert_eq!(
        v.data,
        raws.iter().map(|&r| f32::from(r) * 2.0).collect::<Vec<_>>()
    );
    assert_eq!(v.affine[0], [1.5, 0.0, 0.0, -7.25]);
    let hdr = v.header.unwrap();
    assert!(hdr.big_endian);
    assert_eq!(hdr.dim, h.dim);

    let mut h = header(DIMS, DataType::F64);
    h.big_endian = true;
    let raw: Vec<u8> = (0..12)
        .flat_map(|n| (f64::from(n) * 0.25).to_be_bytes())
        .collect();
    let v = read_nifti_bytes(&gzip(&file_bytes(&h, &raw)), &Limits::default()).unwrap();
    assert_eq!(v.data[11], 2.75);
}

#[test]
fn four_d_with_one_frame_is_accepted_more_frames_rejected() {
    let mut h = header(DIMS, DataType::U8);
    h.dim[0] = 4;
    h.dim[4] = 1;
    let v = read_nifti_bytes(&file_bytes(&h, &[7u8; 12]), &Limits::default()).unwrap();
    assert_eq!(v.dims, DIMS);
    h.dim[4] = 2;
    let msg = err_msg(read_nifti_bytes(
        &file_bytes(&h, &[7u8; 24]),
        &Limits::default(),
    ));
    assert_eq!(msg, "4-D volumes with 2 time points are not supported");
    h.dim[0] = 5;
    h.dim[4] = 1;
    h.dim[5] = 3;
    assert!(err_msg(read_nifti_bytes(
        &file_bytes(&h, &[7u8; 36]),
        &Limits::default()
    ))
    .contains("vector"));
}

#[test]
fn two_d_images_are_rejected() {
    let mut h = header([3, 4, 1], DataType::U8);
    h.dim[0] = 2;
    assert!(err_msg(read_nifti_bytes(
        &file_bytes(&h, &[0u8; 12]),
        &Limits::default()
    ))
    .contains("2-D"));
    let mut h = header(DIMS, DataType::U8);
    h.dim[3] = 0;
    assert!(
        err_msg(read_nifti_bytes(&file_bytes(&h, &[]), &Limits::default())).contains("at least 1")
    );
    h.dim[3] = -4;
    assert!(read_nifti_bytes(&file_bytes(&h, &[]), &Limits::default()).is_err());
}

#[test]
fn unsupported_datatypes_are_named() {
    for (code, bitpix, name) in [
        (32, 64, "complex64"),
        (1792, 128, "complex128"),
        (128, 24, "RGB24"),
        (2304, 32, "RGBA32"),
        (1, 1, "bool"),
        (1536, 128, "float128"),
    ] {
        let mut h = header(DIMS, DataType::U8);
        h.datatype = code;
        h.bitpix = bitpix;
        let msg = err_msg(read_nifti_bytes(
            &file_bytes(&h, &[0u8; 256]),
            &Limits::default(),
        ));
        assert!(msg.contains(name) && msg.contains("not supported"), "{msg}");
    }
    let mut h = header(DIMS, DataType::U8);
    h.datatype = 999;
    assert!(err_msg(read_nifti_bytes(
        &file_bytes(&h, &[0u8; 12]),
        &Limits::default()
    ))
    .contains("999"));
    let mut h = header(DIMS, DataType::I16);
    h.bitpix = 8;
    assert!(err_msg(read_nifti_bytes(
        &file_bytes(&h, &[0u8; 24]),
        &Limits::default()
    ))
    .contains("bitpix"));
}

#[test]
fn truncated_data_is_rejected_plain_and_gzip() {
    let bytes = file_bytes(&header(DIMS, DataType::I16), &le_i16(&[1; 10]));
    let want = "truncated voxel data: expected 24 bytes, got 20";
    assert_eq!(err_msg(read_nifti_bytes(&bytes, &Limits::default())), want);
    assert_eq!(
        err_msg(read_nifti_bytes(&gzip(&bytes), &Limits::default())),
        want
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.nii");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(err_msg(read_nifti(&path, &Limits::default())), want);
    // A gzip stream cut inside the deflate data is an error too, never a panic. (Reading
    // stops after the declared voxels, so a cut inside the 8-byte gzip trailer goes unseen.)
    let full = gzip(&file_bytes(
        &header([64, 64, 64], DataType::F32),
        &vec![3u8; 64 * 64 * 64 * 4],
    ));
    for cut in [10, 300, full.len() / 2, full.len() - 20] {
        assert!(read_nifti_bytes(&full[..cut], &Limits::default()).is_err());
    }
    // Ends inside the header or the extensions.
    assert!(
        err_msg(read_nifti_bytes(&bytes[..200], &Limits::default())).contains("truncated header")
    );
    let mut h = header(DIMS, DataType::U8);
    h.vox_offset = 1000.0;
    let mut short = h.to_bytes().to_vec();
    short.resize(500, 0);
    assert!(read_nifti_bytes(&gzip(&short), &Limits::default()).is_err());
}

#[test]
fn bad_magic_and_sizeof_hdr_are_rejected() {
    let good = file_bytes(&header(DIMS, DataType::U8), &[0u8; 12]);
    let mut b = good.clone();
    b[344..348].copy_from_slice(b"ni1\0");
    assert_eq!(
        err_msg(read_nifti_bytes(&b, &Limits::default())),
        "NIfTI header/image pairs (.hdr/.img) are not supported"
    );
    b[344..348].copy_from_slice(b"xyz\0");
    assert!(err_msg(read_nifti_bytes(&b, &Limits::default())).contains("bad magic"));
    let mut b = good.clone();
    b[..4].copy_from_slice(&123i32.to_le_bytes());
    assert_eq!(
        err_msg(read_nifti_bytes(&b, &Limits::default())),
        "malformed NIfTI file: sizeof_hdr is 123 (expected 348)"
    );
    b[..4].copy_from_slice(&540i32.to_le_bytes());
    assert!(err_msg(read_nifti_bytes(&b, &Limits::default())).contains("NIfTI-2"));
    assert!(read_nifti_bytes(&[], &Limits::default()).is_err());
    assert!(read_nifti_bytes(&[0x1f, 0x8b], &Limits::default()).is_err());
    assert!(read_nifti_bytes(b"not an image at all", &Limits::default()).is_err());
}

#[test]
fn vox_offset_and_extensions() {
    let mut h = header(DIMS, DataType::U8);
    h.vox_offset = 352.0 + 48.0;
    let mut bytes = h.to_bytes().to_vec();
    bytes.extend_from_slice(&[1, 0, 0, 0]);
    bytes.extend_from_slice(&48i32.to_le_bytes());
    bytes.extend_from_slice(&4i32.to_le_bytes());
    bytes.resize(400, b'x');
    bytes.extend_from_slice(&[9u8; 12]);
    let v = read_nifti_bytes(&gzip(&bytes), &Limits::default()).unwrap();
    assert_eq!(v.data, vec![9.0; 12]);
    let small = Limits {
        max_extension_bytes: 16,
        ..Limits::default()
    };
    assert!(matches!(
        read_nifti_bytes(&bytes, &small),
        Err(ImagingError::LimitExceeded(_))
    ));
    for bad in [0.0f32, 348.0, 352.5, f32::NAN] {
        h.vox_offset = bad;
        let mut b = h.to_bytes().to_vec();
        b.resize(400, 0);
        assert!(
            err_msg(read_nifti_bytes(&b, &Limits::default())).contains("vox_offset"),
            "{bad}"
        );
    }
}

#[test]
fn oversized_dims_are_rejected_before_allocating() {
    // 32767^3 voxels declared, a 352-byte body.
    let mut h = header(DIMS, DataType::F64);
    h.dim[1..4].copy_from_slice(&[32767, 32767, 32767]);
    let bytes = file_bytes(&h, &[]);
    let msg = err_msg(read_nifti_bytes(&bytes, &Limits::default()));
    assert!(
        msg.contains("32767 x 32767 x 32767") && msg.contains("limit"),
        "{msg}"
    );
    // With no limits at all, the lie is still found without allocating terabytes:
    let open = Limits {
        max_voxels: u64::MAX,
        max_decompressed_bytes: u64::MAX,
        max_extension_bytes: u64::MAX,
        max_gzip_ratio: u64::MAX,
    };
    assert!(matches!(
        read_nifti_bytes(&bytes, &open),
        Err(ImagingError::Truncated { .. })
    ));
    assert!(matches!(
        read_nifti_bytes(&gzip(&file_bytes(&h, &[0u8; 4096])), &open),
        Err(ImagingError::Truncated { .. })
    ));
    let tight = Limits {
        max_decompressed_bytes: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        read_nifti_bytes(
            &file_bytes(&header([10, 10, 10], DataType::U8), &[0; 1000]),
            &tight
        ),
        Err(ImagingError::LimitExceeded(_))
    ));
}

#[test]
fn gzip_bomb_is_not_decompressed_past_the_declared_size() {
    // 1 GiB of zeros after a header that declares 8 x 8 x 8 bytes, then garbage.
    let h = header([8, 8, 8], DataType::U8);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    use std::io::Write;
    enc.write_all(&file_bytes(&h, &[])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        enc.write_all(&zeros).unwrap();
    }
    let mut bomb = enc.finish().unwrap();
    bomb.extend_from_slice(b"garbage after the gzip member");
    assert!(bomb.len() < 8 << 20);
    let start = std::time::Instant::now();
    let v = read_nifti_bytes(&bomb, &Limits::default()).unwrap();
    assert_eq!(v.data.len(), 512);
    assert!(v.data.iter().all(|&x| x == 0.0));
    assert!(
        start.elapsed().as_secs_f64() < 1.0,
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn header_byte_mutations_never_panic() {
    let mut h = header([4, 3, 2], DataType::I16);
    h.scl_slope = 2.0;
    let good = file_bytes(&h, &le_i16(&[5; 24]));
    let open = Limits {
        max_voxels: u64::MAX,
        max_decompressed_bytes: u64::MAX,
        max_extension_bytes: 1 << 20,
        ..Limits::default()
    };
    for offset in 0..352 {
        for value in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut b = good.clone();
            b[offset] = value;
            let _ = read_nifti_bytes(&b, &Limits::default());
            let _ = read_nifti_bytes(&b, &open);
        }
    }
    for cut in 0..good.len() {
        assert!(read_nifti_bytes(&good[..cut], &Limits::default()).is_err());
    }
}

#[test]
fn gzip_ratio_is_checked_before_decompressing() {
    // a 64 x 64 x 64 zero volume: 262 KB that gzip squeezes to a few hundred bytes
    let h = header([64, 64, 64], DataType::U8);
    let zeros = gzip(&file_bytes(&h, &vec![0u8; 64 * 64 * 64]));
    let ratio = (262_144 + 352) / zeros.len() as u64;
    assert!(ratio > 100, "ratio {ratio}");
    // genuine files are never refused by the default (deflate's own ceiling)
    assert!(read_nifti_bytes(&zeros, &Limits::default()).is_ok());
    let strict = Limits {
        max_gzip_ratio: 50,
        ..Limits::default()
    };
    let msg = err_msg(read_nifti_bytes(&zeros, &strict));
    assert!(msg.contains("50 : 1"), "{msg}");
    // a header that lies about its size is refused up front, without decompressing, even
    // under the default: 100 bytes of gzip cannot hold 8 MB
    let big = header([256, 256, 128], DataType::U8);
    let liar = gzip(&file_bytes(&big, &[]));
    assert!(liar.len() < 1000);
    let msg = err_msg(read_nifti_bytes(&liar, &Limits::default()));
    assert!(msg.contains("gzip stream"), "{msg}");
}
