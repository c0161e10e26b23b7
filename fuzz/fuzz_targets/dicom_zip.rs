//! The zip reader of DICOM uploads (`ferrolabel_dicom::read_zip`, whose directory checks and
//! bounded copy `extract_zip` shares) on arbitrary bytes, then the series assembler on what it
//! read.
//!
//! Invariants: no panic, hang or allocation beyond the limits; an archive that reads holds at
//! most `max_files` files, every name relative without a `..` component, every file and the
//! total within the byte limits (never more than declared: a zip bomb is refused, not
//! inflated).
#![no_main]

use ferrolabel_dicom::{assemble, read_zip, AssembleOptions, InputLimits};
use ferrolabel_fuzz::fuzz_limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: {
    // the assembler catches dicom-rs decoder panics (see dicom_series.rs)
    std::panic::set_hook(Box::new(|_| {}));
}, |data: &[u8]| {
    let limits = InputLimits {
        max_files: 64,
        max_file_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        ..InputLimits::default()
    };
    let Ok(files) = read_zip(data, &limits) else {
        return;
    };
    assert!(files.len() <= limits.max_files);
    let mut total = 0u64;
    for f in &files {
        assert!(!f.name.starts_with('/') && !f.name.starts_with('\\'), "{}", f.name);
        assert!(f.name.split(['/', '\\']).all(|p| p != ".."), "{}", f.name);
        assert!(f.bytes.len() as u64 <= limits.max_file_bytes);
        total += f.bytes.len() as u64;
    }
    assert!(total <= limits.max_total_bytes);
    let options = AssembleOptions {
        input: limits,
        image: fuzz_limits(),
        ..AssembleOptions::default()
    };
    if let Ok(s) = assemble(&files, &options) {
        let [x, y, z] = s.volume.dims;
        assert_eq!(s.volume.data.len(), x * y * z);
    }
});
