//! Shared code of the fuzz targets: the image limits they run under and the invariant every
//! successful image read must satisfy. The code under test comes from the crates themselves
//! (`ferrolabel-imaging`, `ferrolabel-forms`, `ferrolabel-datastore`, `ferrolabel-dicom`),
//! none of which links libtorch.

/// The limits the server applies by default, with the voxel and size limits scaled down so
/// that an input which declares a huge (but within-limit) image cannot make one run allocate
/// gigabytes: everything larger is refused by the same checks the defaults go through.
pub fn fuzz_limits() -> ferrolabel_imaging::Limits {
    ferrolabel_imaging::Limits {
        max_voxels: 1 << 22,
        max_decompressed_bytes: 64 << 20,
        max_extension_bytes: 1 << 20,
        ..ferrolabel_imaging::Limits::default()
    }
}

/// Checks what every successful read must satisfy.
pub fn check_volume(v: &ferrolabel_imaging::Volume) {
    let [x, y, z] = v.dims;
    assert_eq!(v.data.len(), x * y * z, "voxel count differs from dims");
}
