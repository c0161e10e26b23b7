//! The NIfTI-1 reader's gzip path (`.nii.gz`).
//!
//! The first input byte picks how the rest reaches the reader: gzip-compressed whole (valid
//! streams holding arbitrary NIfTI bytes), compressed then cut short or with a byte flipped
//! (torn and corrupt streams), split into several gzip members, or taken as raw gzip bytes.
//! The invariants are those of the `nifti` target, and the reader must never decompress more
//! than the header declares (the limits are checked on the declared sizes first).
#![no_main]

use std::io::Write;

use ferrolabel_fuzz::{check_volume, fuzz_limits};
use ferrolabel_imaging::read_nifti_bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use libfuzzer_sys::fuzz_target;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).expect("in-memory write");
    e.finish().expect("in-memory write")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let stream = match mode % 5 {
        0 => gzip(rest),
        1 => {
            // cut short at a position taken from the input
            let mut z = gzip(rest);
            let cut = rest.first().map_or(0, |&b| b as usize * z.len() / 256);
            z.truncate(cut.max(2));
            z
        }
        2 => {
            // one byte flipped (CRC, length, deflate blocks)
            let mut z = gzip(rest);
            if let Some(&b) = rest.first() {
                let i = 2 + b as usize * (z.len() - 2) / 256;
                z[i] ^= 0x5a;
            }
            z
        }
        3 => {
            // several gzip members, as `cat a.gz b.gz` makes
            let half = rest.len() / 2;
            let mut z = gzip(&rest[..half]);
            z.extend_from_slice(&gzip(&rest[half..]));
            z
        }
        _ => {
            let mut z = vec![0x1f, 0x8b];
            z.extend_from_slice(rest);
            z
        }
    };
    if let Ok(v) = read_nifti_bytes(&stream, &fuzz_limits()) {
        check_volume(&v);
    }
});
