//! Helpers shared by the integration tests: building NIfTI files byte by byte.
#![allow(dead_code)]

use std::io::Write;

use ferrolabel_imaging::affine::IDENTITY;
use ferrolabel_imaging::{DataType, Header};

/// A little-endian header for `dims` of `dtype` with an identity affine.
pub fn header(dims: [usize; 3], dtype: DataType) -> Header {
    Header::new_3d(dims, dtype, &IDENTITY).unwrap()
}

/// Header bytes (in the header's own `big_endian` order), 4 extension-flag bytes, then `data`.
pub fn file_bytes(h: &Header, data: &[u8]) -> Vec<u8> {
    let mut out = if h.big_endian {
        h.to_bytes_big_endian().to_vec()
    } else {
        h.to_bytes().to_vec()
    };
    out.resize(h.vox_offset as usize, 0);
    out.extend_from_slice(data);
    out
}

/// Gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The error message of a result that must be an error.
pub fn err_msg<T: std::fmt::Debug>(r: ferrolabel_imaging::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Little-endian bytes of `i16` values.
pub fn le_i16(v: &[i16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
