//! The NIfTI-1 reader on arbitrary bytes (plain `.nii`; gzip input goes the gzip path).
//!
//! Every read must end in `Ok` or `Err`, never a panic, hang or an allocation beyond what the
//! limits allow. A volume that reads must hold exactly its declared voxels, and a label map
//! written on its header (what the server does with an infer result) must read back on the
//! same grid.
#![no_main]

use ferrolabel_fuzz::{check_volume, fuzz_limits};
use ferrolabel_imaging::{encode_label_nifti, read_nifti_bytes, read_volume_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = fuzz_limits();
    // the server's entry point: format by magic, then by name
    let _ = read_volume_bytes(data, "upload.nii", &limits);
    let Ok(v) = read_nifti_bytes(data, &limits) else {
        return;
    };
    check_volume(&v);
    let header = v.header.as_ref().expect("a NIfTI read keeps its header");
    let labels = vec![1u8; v.data.len()];
    for gzip in [false, true] {
        let bytes = encode_label_nifti(&labels, header, gzip).expect("labels on a header we read");
        let back = read_nifti_bytes(&bytes, &limits).expect("our own label file reads back");
        assert_eq!(back.dims, v.dims);
        assert_eq!(back.data.len(), labels.len());
    }
});
