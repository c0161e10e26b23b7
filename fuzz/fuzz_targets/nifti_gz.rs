//! The NIfTI-1 reader's gzip path (`.nii.gz`).
//!
//! The first input byte picks how the rest reaches the reader: gzip-compressed whole (valid
//! streams holding arbitrary NIfTI bytes), compressed then cut short or with a byte flipped
//! (torn and corrupt streams), split into several gzip members, or taken as raw gzip bytes.
//! The invariants are those of the `nifti` target, and the reader must never decompress more
//! than the header declares (the limits are checked on the declared sizes first): the same
//! stream is also read through a byte-counting decompressor ([`read_nifti_stream`]), which must
//! never have handed out more than the decompressed-size limit, and, when the image is
//! accepted, no byte past the declared header + extensions + voxels. Both paths must agree.
#![no_main]

use std::io::{Read, Write};

use ferrolabel_fuzz::{check_volume, fuzz_limits};
use ferrolabel_imaging::{read_nifti_bytes, read_nifti_stream};
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use libfuzzer_sys::fuzz_target;

/// A reader that counts the bytes it hands out.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// `vox_offset + voxels * bitpix / 8` from the first 348 decompressed bytes (either byte
/// order, decided by `sizeof_hdr`), as the header declares it.
fn declared_size(stream: &[u8], voxels: u64) -> Option<u64> {
    let mut head = [0u8; 348];
    MultiGzDecoder::new(stream).read_exact(&mut head).ok()?;
    let le = i32::from_le_bytes(head[0..4].try_into().ok()?) == 348;
    let bitpix = if le {
        i16::from_le_bytes([head[72], head[73]])
    } else {
        i16::from_be_bytes([head[72], head[73]])
    };
    let raw = head[108..112].try_into().ok()?;
    let vox_offset = if le {
        f32::from_le_bytes(raw)
    } else {
        f32::from_be_bytes(raw)
    };
    Some(vox_offset as u64 + voxels * (bitpix.max(0) as u64) / 8)
}

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
    let limits = fuzz_limits();
    let whole = read_nifti_bytes(&stream, &limits);
    if let Ok(v) = &whole {
        check_volume(v);
    }
    let mut counted = Counting {
        inner: MultiGzDecoder::new(&stream[..]),
        count: 0,
    };
    let streamed = read_nifti_stream(&mut counted, &limits);
    assert!(
        counted.count <= limits.max_decompressed_bytes,
        "decompressed {} bytes, over the {} byte limit",
        counted.count,
        limits.max_decompressed_bytes
    );
    if let Ok(v) = &streamed {
        let voxels = v.dims.iter().map(|&d| d as u64).product::<u64>();
        let declared = declared_size(&stream, voxels).expect("an accepted image has a header");
        assert!(
            counted.count <= declared,
            "decompressed {} bytes past the declared {declared}",
            counted.count
        );
    }
    // the in-memory path may refuse more (the gzip ratio check), never accept what the
    // streamed path refuses, and reads the same voxels
    if let Ok(v) = &whole {
        let s = streamed
            .as_ref()
            .expect("accepted whole but refused streamed");
        assert_eq!(v.dims, s.dims);
        assert!(v
            .data
            .iter()
            .zip(&s.data)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
});
