//! The 348-byte NIfTI-1 header: every raw field, parsing (either byte order), serialising,
//! validation of the parts this crate relies on, and the affines it encodes.

use crate::affine::Affine;
use crate::dtype::DataType;
use crate::error::{ImagingError, Result};

/// Size of a NIfTI-1 header in bytes (`sizeof_hdr`).
pub const HEADER_SIZE: usize = 348;
/// Offset of the voxel data in the files this crate writes: header + 4 extension-flag bytes.
pub const DEFAULT_VOX_OFFSET: usize = 352;
/// Magic of a single-file NIfTI-1 image (`.nii`).
pub const MAGIC_SINGLE: [u8; 4] = *b"n+1\0";
/// Magic of a NIfTI-1 header/image pair (`.hdr` + `.img`), which is not supported.
pub const MAGIC_PAIR: [u8; 4] = *b"ni1\0";

/// Every field of a NIfTI-1 header, as stored (names as in `nifti1.h`).
///
/// Reading keeps all of them, so a label map can be written back with the same grid fields.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // the fields are the standard's, documented in nifti1.h
pub struct Header {
    pub sizeof_hdr: i32,
    pub data_type: [u8; 10],
    pub db_name: [u8; 18],
    pub extents: i32,
    pub session_error: i16,
    pub regular: u8,
    pub dim_info: u8,
    pub dim: [i16; 8],
    pub intent_p1: f32,
    pub intent_p2: f32,
    pub intent_p3: f32,
    pub intent_code: i16,
    pub datatype: i16,
    pub bitpix: i16,
    pub slice_start: i16,
    pub pixdim: [f32; 8],
    pub vox_offset: f32,
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub slice_end: i16,
    pub slice_code: u8,
    pub xyzt_units: u8,
    pub cal_max: f32,
    pub cal_min: f32,
    pub slice_duration: f32,
    pub toffset: f32,
    pub glmax: i32,
    pub glmin: i32,
    pub descrip: [u8; 80],
    pub aux_file: [u8; 24],
    pub qform_code: i16,
    pub sform_code: i16,
    pub quatern_b: f32,
    pub quatern_c: f32,
    pub quatern_d: f32,
    pub qoffset_x: f32,
    pub qoffset_y: f32,
    pub qoffset_z: f32,
    pub srow_x: [f32; 4],
    pub srow_y: [f32; 4],
    pub srow_z: [f32; 4],
    pub intent_name: [u8; 16],
    pub magic: [u8; 4],
    /// Not a header field: whether the header (and so the voxel data) was big-endian.
    /// Writers always write little-endian.
    pub big_endian: bool,
}

/// Reads fields of a header buffer in its byte order.
struct Fields<'a> {
    b: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn arr<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[off..off + N]);
        out
    }
    fn i16(&self, off: usize) -> i16 {
        let a = self.arr(off);
        if self.big {
            i16::from_be_bytes(a)
        } else {
            i16::from_le_bytes(a)
        }
    }
    fn i32(&self, off: usize) -> i32 {
        let a = self.arr(off);
        if self.big {
            i32::from_be_bytes(a)
        } else {
            i32::from_le_bytes(a)
        }
    }
    fn f32(&self, off: usize) -> f32 {
        f32::from_bits(self.i32(off) as u32)
    }
    fn i16s<const N: usize>(&self, off: usize) -> [i16; N] {
        std::array::from_fn(|n| self.i16(off + 2 * n))
    }
    fn f32s<const N: usize>(&self, off: usize) -> [f32; N] {
        std::array::from_fn(|n| self.f32(off + 4 * n))
    }
}

/// Writes fields into a header buffer in a chosen byte order.
struct Out {
    b: [u8; HEADER_SIZE],
    big: bool,
}

impl Out {
    fn bytes(&mut self, off: usize, v: &[u8]) {
        self.b[off..off + v.len()].copy_from_slice(v);
    }
    fn i16(&mut self, off: usize, v: i16) {
        let a = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.bytes(off, &a);
    }
    fn i32(&mut self, off: usize, v: i32) {
        let a = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.bytes(off, &a);
    }
    fn f32(&mut self, off: usize, v: f32) {
        self.i32(off, v.to_bits() as i32);
    }
    fn i16s(&mut self, off: usize, v: &[i16]) {
        for (n, x) in v.iter().enumerate() {
            self.i16(off + 2 * n, *x);
        }
    }
    fn f32s(&mut self, off: usize, v: &[f32]) {
        for (n, x) in v.iter().enumerate() {
            self.f32(off + 4 * n, *x);
        }
    }
}

impl Header {
    /// Parses the first 348 bytes of `bytes` as a single-file NIfTI-1 header.
    ///
    /// The byte order is detected from `sizeof_hdr`; the magic must be `"n+1\0"`. Nothing
    /// else is validated here (see [`Header::data_type`], [`Header::volume_dims`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < HEADER_SIZE {
            return Err(ImagingError::nifti(format!(
                "truncated header: expected {HEADER_SIZE} bytes, got {}",
                bytes.len()
            )));
        }
        let mut first = [0u8; 4];
        first.copy_from_slice(&bytes[..4]);
        let big = match (i32::from_le_bytes(first), i32::from_be_bytes(first)) {
            (348, _) => false,
            (_, 348) => true,
            (540, _) | (_, 540) => {
                return Err(ImagingError::Unsupported(
                    "NIfTI-2 files are not supported".into(),
                ))
            }
            (n, _) => {
                return Err(ImagingError::nifti(format!(
                    "sizeof_hdr is {n} (expected 348)"
                )))
            }
        };
        let f = Fields { b: bytes, big };
        let magic: [u8; 4] = f.arr(344);
        if magic == MAGIC_PAIR {
            return Err(ImagingError::Unsupported(
                "NIfTI header/image pairs (.hdr/.img) are not supported".into(),
            ));
        }
        if magic != MAGIC_SINGLE {
            return Err(ImagingError::nifti(format!(
                "bad magic \"{}\" (expected \"n+1\\0\")",
                magic.escape_ascii()
            )));
        }
        Ok(Header {
            sizeof_hdr: f.i32(0),
            data_type: f.arr(4),
            db_name: f.arr(14),
            extents: f.i32(32),
            session_error: f.i16(36),
            regular: bytes[38],
            dim_info: bytes[39],
            dim: f.i16s(40),
            intent_p1: f.f32(56),
            intent_p2: f.f32(60),
            intent_p3: f.f32(64),
            intent_code: f.i16(68),
            datatype: f.i16(70),
            bitpix: f.i16(72),
            slice_start: f.i16(74),
            pixdim: f.f32s(76),
            vox_offset: f.f32(108),
            scl_slope: f.f32(112),
            scl_inter: f.f32(116),
            slice_end: f.i16(120),
            slice_code: bytes[122],
            xyzt_units: bytes[123],
            cal_max: f.f32(124),
            cal_min: f.f32(128),
            slice_duration: f.f32(132),
            toffset: f.f32(136),
            glmax: f.i32(140),
            glmin: f.i32(144),
            descrip: f.arr(148),
            aux_file: f.arr(228),
            qform_code: f.i16(252),
            sform_code: f.i16(254),
            quatern_b: f.f32(256),
            quatern_c: f.f32(260),
            quatern_d: f.f32(264),
            qoffset_x: f.f32(268),
            qoffset_y: f.f32(272),
            qoffset_z: f.f32(276),
            srow_x: f.f32s(280),
            srow_y: f.f32s(296),
            srow_z: f.f32s(312),
            intent_name: f.arr(328),
            magic,
            big_endian: big,
        })
    }

    /// The header as 348 little-endian bytes (the `big_endian` flag is ignored).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        self.encode(false)
    }

    /// The header as 348 big-endian bytes (for tests and tools; the writers use little-endian).
    pub fn to_bytes_big_endian(&self) -> [u8; HEADER_SIZE] {
        self.encode(true)
    }

    fn encode(&self, big: bool) -> [u8; HEADER_SIZE] {
        let mut o = Out {
            b: [0u8; HEADER_SIZE],
            big,
        };
        o.i32(0, self.sizeof_hdr);
        o.bytes(4, &self.data_type);
        o.bytes(14, &self.db_name);
        o.i32(32, self.extents);
        o.i16(36, self.session_error);
        o.bytes(38, &[self.regular, self.dim_info]);
        o.i16s(40, &self.dim);
        o.f32s(56, &[self.intent_p1, self.intent_p2, self.intent_p3]);
        o.i16s(
            68,
            &[
                self.intent_code,
                self.datatype,
                self.bitpix,
                self.slice_start,
            ],
        );
        o.f32s(76, &self.pixdim);
        o.f32s(108, &[self.vox_offset, self.scl_slope, self.scl_inter]);
        o.i16(120, self.slice_end);
        o.bytes(122, &[self.slice_code, self.xyzt_units]);
        o.f32s(
            124,
            &[
                self.cal_max,
                self.cal_min,
                self.slice_duration,
                self.toffset,
            ],
        );
        o.i32(140, self.glmax);
        o.i32(144, self.glmin);
        o.bytes(148, &self.descrip);
        o.bytes(228, &self.aux_file);
        o.i16s(252, &[self.qform_code, self.sform_code]);
        o.f32s(
            256,
            &[
                self.quatern_b,
                self.quatern_c,
                self.quatern_d,
                self.qoffset_x,
                self.qoffset_y,
                self.qoffset_z,
            ],
        );
        o.f32s(280, &self.srow_x);
        o.f32s(296, &self.srow_y);
        o.f32s(312, &self.srow_z);
        o.bytes(328, &self.intent_name);
        o.bytes(344, &self.magic);
        o.b
    }

    /// A fresh little-endian single-file header for a 3-D grid of `dtype` voxels, placed in
    /// world space by `affine` (sform and qform both set from it, codes 1 = scanner, units mm).
    pub fn new_3d(dims: [usize; 3], dtype: DataType, affine: &Affine) -> Result<Header> {
        let mut dim = [1i16; 8];
        dim[0] = 3;
        for (n, &d) in dims.iter().enumerate() {
            dim[n + 1] = i16::try_from(d).ok().filter(|&d| d > 0).ok_or_else(|| {
                ImagingError::InvalidArgument(format!(
                    "dimension {d} cannot be stored in a NIfTI-1 header (1..=32767)"
                ))
            })?;
        }
        let mut h = Header {
            sizeof_hdr: HEADER_SIZE as i32,
            data_type: [0; 10],
            db_name: [0; 18],
            extents: 0,
            session_error: 0,
            regular: b'r',
            dim_info: 0,
            dim,
            intent_p1: 0.0,
            intent_p2: 0.0,
            intent_p3: 0.0,
            intent_code: 0,
            datatype: dtype.nifti_code(),
            bitpix: (dtype.size() * 8) as i16,
            slice_start: 0,
            pixdim: [1.0; 8],
            vox_offset: DEFAULT_VOX_OFFSET as f32,
            scl_slope: 1.0,
            scl_inter: 0.0,
            slice_end: 0,
            slice_code: 0,
            xyzt_units: 2,
            cal_max: 0.0,
            cal_min: 0.0,
            slice_duration: 0.0,
            toffset: 0.0,
            glmax: 0,
            glmin: 0,
            descrip: [0; 80],
            aux_file: [0; 24],
            qform_code: 0,
            sform_code: 0,
            quatern_b: 0.0,
            quatern_c: 0.0,
            quatern_d: 0.0,
            qoffset_x: 0.0,
            qoffset_y: 0.0,
            qoffset_z: 0.0,
            srow_x: [0.0; 4],
            srow_y: [0.0; 4],
            srow_z: [0.0; 4],
            intent_name: [0; 16],
            magic: MAGIC_SINGLE,
            big_endian: false,
        };
        h.set_affine(affine)?;
        Ok(h)
    }

    /// The voxel type, checking that `bitpix` agrees with `datatype`.
    pub fn data_type(&self) -> Result<DataType> {
        let t = DataType::from_nifti_code(self.datatype)?;
        if self.bitpix as usize != t.size() * 8 {
            return Err(ImagingError::nifti(format!(
                "bitpix {} does not match datatype {} ({} bits)",
                self.bitpix,
                self.datatype,
                t.size() * 8
            )));
        }
        Ok(t)
    }

    /// The spatial grid `[nx, ny, nz]`: `dim[0]` must be 3, or 4 with a single time point.
    pub fn volume_dims(&self) -> Result<[usize; 3]> {
        let d = self.dim;
        match d[0] {
            3 => {}
            4 if d[4] == 1 => {}
            4 => {
                return Err(ImagingError::Unsupported(format!(
                    "4-D volumes with {} time points are not supported",
                    d[4]
                )))
            }
            5..=7 if d[5] > 1 => {
                return Err(ImagingError::Unsupported(format!(
                    "vector-valued volumes (dim[5]={}) are not supported",
                    d[5]
                )))
            }
            5..=7 => {
                return Err(ImagingError::Unsupported(format!(
                    "{}-D volumes are not supported (only 3-D, or 4-D with one time point)",
                    d[0]
                )))
            }
            1 | 2 => {
                return Err(ImagingError::Unsupported(format!(
                    "{}-D images are not supported (dim[0]={}); expected a 3-D volume",
                    d[0], d[0]
                )))
            }
            n => {
                return Err(ImagingError::nifti(format!(
                    "dim[0] is {n} (expected 1..=7)"
                )))
            }
        }
        if d[1..4].iter().any(|&n| n <= 0) {
            return Err(ImagingError::Unsupported(format!(
                "dims {} x {} x {} are not a 3-D volume (each must be at least 1)",
                d[1], d[2], d[3]
            )));
        }
        Ok([d[1] as usize, d[2] as usize, d[3] as usize])
    }

    /// The scaling nibabel applies: `Some((slope, inter))` when `scl_slope` is finite and
    /// non-zero and the pair is not the identity (a non-finite `scl_inter` counts as 0).
    pub fn slope_inter(&self) -> Option<(f64, f64)> {
        let slope = f64::from(self.scl_slope);
        let mut inter = f64::from(self.scl_inter);
        if slope == 0.0 || !slope.is_finite() {
            return None;
        }
        if !inter.is_finite() {
            inter = 0.0;
        }
        (slope != 1.0 || inter != 0.0).then_some((slope, inter))
    }
}
