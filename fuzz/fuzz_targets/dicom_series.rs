//! The DICOM series assembler (`ferrolabel-dicom`) on arbitrary files, both ways the server
//! uses it: from memory (`assemble`) and streaming from disk (`assemble_files`, what uploads
//! and the DICOMweb cache go through: headers first, then one file at a time, several threads).
//!
//! Input layout: the files of one upload, joined by the separator `%%FILE%%`.
//!
//! Invariants: no panic escaping the assembler, hang or allocation beyond the limits (voxels, files, bytes, scaled
//! down as `fuzz_limits`); both ways agree: one assembles exactly when the other does, to the
//! same grid, voxels (bit for bit) and affine, with one slice reference per slice.
#![no_main]

use ferrolabel_dicom::{
    assemble, assemble_files, AssembleOptions, InputLimits, NamedBytes, NamedPath, Series,
};
use ferrolabel_fuzz::fuzz_limits;
use libfuzzer_sys::fuzz_target;

const SEP: &[u8] = b"%%FILE%%";

fn split(data: &[u8]) -> Vec<NamedBytes> {
    let mut files = Vec::new();
    let mut rest = data;
    loop {
        let at = rest.windows(SEP.len()).position(|w| w == SEP);
        let (file, next) = match at {
            Some(i) => (&rest[..i], Some(&rest[i + SEP.len()..])),
            None => (rest, None),
        };
        files.push(NamedBytes {
            name: format!("f{}.dcm", files.len()),
            bytes: file.to_vec(),
        });
        match next {
            Some(n) => rest = n,
            None => return files,
        }
    }
}

fn check(s: &Series) {
    let [x, y, z] = s.volume.dims;
    assert_eq!(s.volume.data.len(), x * y * z);
    assert_eq!(s.info.slices.len(), z);
    assert_eq!((s.info.columns, s.info.rows), (x, y));
}

fuzz_target!(init: {
    // libfuzzer-sys's panic hook aborts on every panic, even one the assembler catches (it
    // turns dicom-rs decoder panics on corrupt data into errors); a panic that escapes the
    // target still aborts (libfuzzer-sys checks the target's own result)
    std::panic::set_hook(Box::new(|_| {}));
}, |data: &[u8]| {
    let options = AssembleOptions {
        input: InputLimits {
            max_files: 64,
            max_file_bytes: 1 << 20,
            max_total_bytes: 4 << 20,
            ..InputLimits::default()
        },
        image: fuzz_limits(),
        ..AssembleOptions::default()
    };
    let files = split(data);
    let in_memory = assemble(&files, &options);
    let dir = tempfile::tempdir().expect("a temp dir");
    let on_disk: Vec<NamedPath> = files
        .iter()
        .map(|f| {
            let path = dir.path().join(&f.name);
            std::fs::write(&path, &f.bytes).expect("writing a temp file");
            NamedPath {
                name: f.name.clone(),
                path,
            }
        })
        .collect();
    let streamed = assemble_files(&on_disk, &options);
    match (&in_memory, &streamed) {
        (Ok(a), Ok(b)) => {
            check(a);
            check(b);
            assert_eq!(a.volume.dims, b.volume.dims);
            assert_eq!(a.volume.affine, b.volume.affine);
            let bits = |s: &Series| s.volume.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(bits(a) == bits(b), "voxels differ between memory and disk");
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "memory and disk disagree: {:?} vs {:?}",
            a.as_ref().map(|s| s.volume.dims),
            b.as_ref().map(|s| s.volume.dims)
        ),
    }
});
