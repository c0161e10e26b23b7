//! Cross-checks our header parser against the independent `nifti` crate on real files and on
//! headers we write: both must read the same dims, datatype, pixdim, xform codes, sform rows,
//! quaternion and scaling fields.

use ferrolabel_imaging::{encode_label_nifti, read_nifti_bytes, Limits};
use std::io::Read;

fn decompressed(path: &str) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn crosscheck(bytes: &[u8]) {
    let ours = read_nifti_bytes(bytes, &Limits::default()).unwrap();
    let h = ours.header.as_ref().unwrap();
    let theirs = nifti::NiftiHeader::from_reader(bytes).unwrap();
    assert_eq!(h.dim.map(|d| d as u16), theirs.dim);
    assert_eq!(h.datatype, theirs.datatype);
    assert_eq!(h.bitpix, theirs.bitpix);
    assert_eq!(h.pixdim, theirs.pixdim);
    assert_eq!(h.qform_code, theirs.qform_code);
    assert_eq!(h.sform_code, theirs.sform_code);
    assert_eq!(
        [h.quatern_b, h.quatern_c, h.quatern_d],
        [theirs.quatern_b, theirs.quatern_c, theirs.quatern_d]
    );
    assert_eq!(
        [h.qoffset_x, h.qoffset_y, h.qoffset_z],
        [theirs.quatern_x, theirs.quatern_y, theirs.quatern_z]
    );
    assert_eq!(
        [h.srow_x, h.srow_y, h.srow_z],
        [theirs.srow_x, theirs.srow_y, theirs.srow_z]
    );
    assert_eq!(h.vox_offset, theirs.vox_offset);
    assert_eq!(h.scl_slope.to_bits(), theirs.scl_slope.to_bits());
    assert_eq!(h.scl_inter.to_bits(), theirs.scl_inter.to_bits());
}

#[test]
fn real_files_parse_the_same_in_both_readers() {
    for f in [
        "example_ct.nii.gz",
        "example_ct_sm.nii.gz",
        "example_seg.nii.gz",
    ] {
        crosscheck(&decompressed(&format!(
            "{}/../data/totalseg/{f}",
            env!("CARGO_MANIFEST_DIR")
        )));
    }
}

#[test]
fn label_maps_we_write_parse_the_same_in_the_nifti_crate() {
    let ct = decompressed(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/totalseg/example_ct_sm.nii.gz"
    ));
    let vol = read_nifti_bytes(&ct, &Limits::default()).unwrap();
    let labels = vec![3u8; vol.len()];
    let bytes = encode_label_nifti(&labels, vol.header.as_ref().unwrap(), false).unwrap();
    crosscheck(&bytes);
}
