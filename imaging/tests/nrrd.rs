//! NRRD label maps: round trip with the affine, Slicer-style headers, bad input, dispatch.

mod common;

use common::{err_msg, file_bytes, gzip, header};
use ferrolabel_imaging::affine::Affine;
use ferrolabel_imaging::{
    encode_label_nrrd, read_nrrd, read_volume, read_volume_bytes, write_label_nrrd, DataType,
    Limits,
};

fn oblique() -> Affine {
    let (s, c) = 0.3f64.sin_cos();
    [
        [-0.8 * c, -0.8 * s, 0.0, 123.456],
        [0.8 * s, -0.8 * c, 0.0, -0.1],
        [0.0, 0.0, 2.5, -300.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

#[test]
fn labels_and_affine_round_trip() {
    let dims = [5, 4, 3];
    let labels: Vec<u8> = (0..60).map(|n| (n * 37 % 256) as u8).collect();
    for gz in [false, true] {
        let bytes = encode_label_nrrd(&labels, dims, &oblique(), gz).unwrap();
        let end = bytes.windows(2).position(|w| w == b"\n\n").unwrap();
        let text = String::from_utf8_lossy(&bytes[..end]);
        assert!(text.starts_with("NRRD0004\n") && text.contains("space: left-posterior-superior"));
        assert!(text.contains(if gz {
            "encoding: gzip"
        } else {
            "encoding: raw"
        }));
        let v = read_volume_bytes(&bytes, "result.nrrd", &Limits::default()).unwrap();
        assert_eq!(v.dims, dims);
        assert_eq!(v.source_dtype, DataType::U8);
        assert_eq!(
            v.data,
            labels.iter().map(|&l| f32::from(l)).collect::<Vec<_>>()
        );
        assert_eq!(v.affine, oblique(), "exact round trip of the affine");
        assert!(v.header.is_none());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.nrrd");
    write_label_nrrd(&path, &labels, dims, &oblique(), true).unwrap();
    assert_eq!(
        read_nrrd(&path, &Limits::default()).unwrap().affine,
        oblique()
    );
    assert_eq!(read_volume(&path, &Limits::default()).unwrap().dims, dims);
    assert!(encode_label_nrrd(&labels[1..], dims, &oblique(), false).is_err());
}

#[test]
fn lps_origin_is_negated_in_x_and_y() {
    let bytes = encode_label_nrrd(&[0; 8], [2, 2, 2], &oblique(), false).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("space origin: (-123.456,0.1,-300)"), "{text}");
}

fn slicer_like(space: &str, ty: &str, endian: &str, body: &[u8], encoding: &str) -> Vec<u8> {
    let mut out = format!(
        "NRRD0004\r\n# comment\r\ntype: {ty}\r\ndimension: 3\r\nspace: {space}\r\nsizes: 2 1 2\r\n\
         space directions: (0.5, 0, 0) (0,2,0) ( 0 , 0 , -3 )\r\nkinds: domain domain domain\r\n\
         endian: {endian}\r\nencoding: {encoding}\r\nspace origin: (10,20,30)\r\nSegment0_ID:=abc\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[test]
fn slicer_style_headers_of_other_types() {
    let body: Vec<u8> = [1i16, -2, 300, -32768]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let v = read_volume_bytes(
        &slicer_like("RAS", "short", "big", &body, "raw"),
        "",
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(v.data, vec![1.0, -2.0, 300.0, -32768.0]);
    assert_eq!(v.affine[0], [0.5, 0.0, 0.0, 10.0]);
    assert_eq!(v.affine[2], [0.0, 0.0, -3.0, 30.0]);
    let v = read_volume_bytes(
        &slicer_like("left-posterior-superior", "int16", "big", &body, "raw"),
        "",
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(v.affine[0], [-0.5, 0.0, 0.0, -10.0]);
    assert_eq!(v.affine[1], [0.0, -2.0, 0.0, -20.0]);

    let floats: Vec<u8> = [0.5f32, 1.5, -2.0, 7.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let v = read_volume_bytes(
        &slicer_like("LPS", "float", "little", &gzip(&floats), "gzip"),
        "",
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(v.data, vec![0.5, 1.5, -2.0, 7.0]);
    for (ty, bytes) in [
        (
            "uint16",
            [1u16, 2, 3, 65535]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (
            "int32",
            [1i32, 2, 3, -5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        ("uchar", vec![1, 2, 3, 4]),
    ] {
        let v = read_volume_bytes(
            &slicer_like("RAS", ty, "little", &bytes, "gz"),
            "",
            &Limits::default(),
        );
        assert!(v.is_err(), "raw bytes are not gzip");
        let v = read_volume_bytes(
            &slicer_like("RAS", ty, "little", &gzip(&bytes), "gz"),
            "",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(v.data.len(), 4, "{ty}");
    }
}

#[test]
fn bad_nrrd_input_is_rejected() {
    let limits = Limits::default();
    let ok = slicer_like("RAS", "uchar", "little", &[1, 2, 3, 4], "raw");
    assert!(read_volume_bytes(&ok, "", &limits).is_ok());
    let text = String::from_utf8(ok.clone()).unwrap();
    let cases = [
        (text.replace("dimension: 3", "dimension: 4"), "dimension 4"),
        (text.replace("type: uchar", "type: block"), "block"),
        (text.replace("encoding: raw", "encoding: bzip2"), "bzip2"),
        (
            text.replace("space: RAS", "space: 3D-right-handed"),
            "3D-right-handed",
        ),
        (text.replace("sizes: 2 1 2", "sizes: 2 x 2"), "sizes"),
        (text.replace("sizes: 2 1 2", "sizes: 2 0 2"), "sizes"),
        (text.replace("(0,2,0)", "(0,2)"), "space directions"),
        (text.replace("(10,20,30)", "(nan,20,30)"), "space origin"),
        (
            text.replace("\r\n\r\n", "\r\ndata file: x.raw\r\n\r\n"),
            "detached",
        ),
        (text.replace("\r\n\r\n", "\r\n"), "blank line"),
        (
            text.replace("# comment", "no colon here"),
            "bad header line",
        ),
        (
            text[..text.len() - 1].to_string(),
            "truncated voxel data: expected 4 bytes, got 3",
        ),
    ];
    for (bytes, want) in cases {
        let msg = err_msg(read_volume_bytes(bytes.as_bytes(), "x.nrrd", &limits));
        assert!(msg.contains(want), "{want}: {msg}");
    }
    let huge = text.replace("sizes: 2 1 2", "sizes: 100000 100000 100000");
    assert!(err_msg(read_volume_bytes(huge.as_bytes(), "", &limits)).contains("limit"));
    let open = Limits {
        max_voxels: u64::MAX,
        max_decompressed_bytes: u64::MAX,
        max_extension_bytes: u64::MAX,
        max_gzip_ratio: u64::MAX,
    };
    let huge_gz = slicer_like("RAS", "double", "little", &gzip(&[0; 64]), "gzip");
    let huge_gz =
        String::from_utf8_lossy(&huge_gz).replace("sizes: 2 1 2", "sizes: 100000 100000 100000");
    assert!(read_volume_bytes(huge_gz.as_bytes(), "", &open).is_err());
    let tiny = Limits {
        max_extension_bytes: 20,
        ..Limits::default()
    };
    assert!(err_msg(read_volume_bytes(&ok, "", &tiny)).contains("header"));
}

#[test]
fn read_volume_bytes_dispatches_on_magic_then_name() {
    let limits = Limits::default();
    let nii = file_bytes(&header([2, 2, 2], DataType::U8), &[1; 8]);
    assert_eq!(
        read_volume_bytes(&nii, "upload.bin", &limits).unwrap().dims,
        [2, 2, 2]
    );
    assert_eq!(
        read_volume_bytes(&gzip(&nii), "", &limits).unwrap().dims,
        [2, 2, 2]
    );
    let msg = err_msg(read_volume_bytes(
        b"\x89PNG\r\n\x1a\n....",
        "image.png",
        &limits,
    ));
    assert!(msg.starts_with("unsupported image format"), "{msg}");
    assert!(err_msg(read_volume_bytes(b"junk", "x.nii.gz", &limits)).contains("NIfTI"));
    assert!(err_msg(read_volume_bytes(b"junk", "x.NRRD", &limits)).contains("NRRD"));
    assert!(read_volume_bytes(&[], "", &limits).is_err());
}

#[test]
fn truncations_and_mutations_never_panic() {
    let good = encode_label_nrrd(&[3; 24], [4, 3, 2], &oblique(), false).unwrap();
    let open = Limits {
        max_voxels: u64::MAX,
        max_decompressed_bytes: u64::MAX,
        max_extension_bytes: 1 << 20,
        ..Limits::default()
    };
    for cut in 0..good.len() {
        assert!(read_volume_bytes(&good[..cut], "x.nrrd", &Limits::default()).is_err());
    }
    for offset in 0..good.len() {
        for value in [b'0', b'9', b'-', b' ', b'\n', b'(', 0xff] {
            let mut b = good.clone();
            b[offset] = value;
            let _ = read_volume_bytes(&b, "x.nrrd", &open);
        }
    }
}
