//! Voxel data types and the decoding of raw voxel bytes into `f32`.

use std::io::{ErrorKind, Read};

use crate::error::{ImagingError, Result};

/// The on-disk voxel types this crate reads (the NIfTI-1 codes are in [`DataType::nifti_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `uint8` (NIfTI 2).
    U8,
    /// `int8` (NIfTI 256).
    I8,
    /// `uint16` (NIfTI 512).
    U16,
    /// `int16` (NIfTI 4).
    I16,
    /// `uint32` (NIfTI 768).
    U32,
    /// `int32` (NIfTI 8).
    I32,
    /// `uint64` (NIfTI 1280).
    U64,
    /// `int64` (NIfTI 1024).
    I64,
    /// `float32` (NIfTI 16).
    F32,
    /// `float64` (NIfTI 64).
    F64,
}

impl DataType {
    /// Every supported type.
    pub const ALL: [DataType; 10] = [
        DataType::U8,
        DataType::I8,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
    ];

    /// The NIfTI-1 `datatype` code.
    pub fn nifti_code(self) -> i16 {
        match self {
            DataType::U8 => 2,
            DataType::I8 => 256,
            DataType::U16 => 512,
            DataType::I16 => 4,
            DataType::U32 => 768,
            DataType::I32 => 8,
            DataType::U64 => 1280,
            DataType::I64 => 1024,
            DataType::F32 => 16,
            DataType::F64 => 64,
        }
    }

    /// The type of a NIfTI-1 `datatype` code, or an error naming an unsupported code.
    pub fn from_nifti_code(code: i16) -> Result<DataType> {
        if let Some(t) = DataType::ALL.into_iter().find(|t| t.nifti_code() == code) {
            return Ok(t);
        }
        let name = match code {
            0 => "unknown (0)",
            1 => "binary/bool (1)",
            32 => "complex64 (32)",
            128 => "RGB24 (128)",
            255 => "all (255)",
            1536 => "float128 (1536)",
            1792 => "complex128 (1792)",
            2048 => "complex256 (2048)",
            2304 => "RGBA32 (2304)",
            _ => return Err(ImagingError::nifti(format!("unknown datatype code {code}"))),
        };
        Err(ImagingError::Unsupported(format!(
            "NIfTI datatype {name} is not supported"
        )))
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
        }
    }

    /// Whether the type is floating point.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }
}

/// A raw sample type: decoded from bytes, cast to `f32` or widened to `f64` for scaling.
trait Sample: Copy {
    const SIZE: usize;
    const FLOAT: bool;
    fn decode(bytes: &[u8], big_endian: bool) -> Self;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
}

macro_rules! sample {
    ($t:ty, $float:expr) => {
        impl Sample for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const FLOAT: bool = $float;
            fn decode(bytes: &[u8], big_endian: bool) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(bytes);
                if big_endian {
                    <$t>::from_be_bytes(raw)
                } else {
                    <$t>::from_le_bytes(raw)
                }
            }
            fn to_f32(self) -> f32 {
                self as f32
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}

sample!(u8, false);
sample!(i8, false);
sample!(u16, false);
sample!(i16, false);
sample!(u32, false);
sample!(i32, false);
sample!(u64, false);
sample!(i64, false);
sample!(f32, true);
sample!(f64, true);

/// Linear intensity scaling `value = raw · slope + inter`, computed in `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scaling {
    pub slope: f64,
    pub inter: f64,
}

/// Appends the decoded samples of `bytes` (a whole number of samples) to `out`; returns whether
/// any decoded value is NaN or infinite.
fn decode_chunk<T: Sample>(
    bytes: &[u8],
    big_endian: bool,
    scaling: Option<Scaling>,
    out: &mut Vec<f32>,
) -> bool {
    let samples = bytes
        .chunks_exact(T::SIZE)
        .map(|b| T::decode(b, big_endian));
    let before = out.len();
    match scaling {
        // Same as numpy: `raw * slope` is skipped when slope is 1, `+ inter` when inter is 0,
        // so that -0.0 and NaN payloads come out exactly as nibabel gives them.
        Some(Scaling { slope, inter }) => out.extend(samples.map(|raw| {
            let mut v = raw.to_f64();
            if slope != 1.0 {
                v *= slope;
            }
            if inter != 0.0 {
                v += inter;
            }
            v as f32
        })),
        None => out.extend(samples.map(T::to_f32)),
    }
    if T::FLOAT || scaling.is_some() {
        out[before..].iter().any(|v| !v.is_finite())
    } else {
        false
    }
}

/// Reads until `buf` is full or the stream ends; an unexpected end of a compressed stream
/// counts as the end.
pub(crate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(ImagingError::io(what, e)),
        }
    }
    Ok(filled)
}

const CHUNK_BYTES: usize = 1 << 20;

/// Reads exactly `count` samples of `dtype` from `r` and converts them to `f32` (see
/// [`crate::nifti`] for the scaling rules). `capacity_hint` caps the up-front allocation so
/// that a header that lies about its size costs nothing before the data turns out missing.
///
/// Returns the values and whether any is NaN or infinite.
pub(crate) fn read_samples<R: Read>(
    r: R,
    dtype: DataType,
    big_endian: bool,
    scaling: Option<Scaling>,
    count: u64,
    capacity_hint: u64,
) -> Result<(Vec<f32>, bool)> {
    let expected = count
        .checked_mul(dtype.size() as u64)
        .ok_or_else(|| ImagingError::LimitExceeded(format!("{count} voxels overflow")))?;
    let mut r = r.take(expected);
    let capacity = usize::try_from(count.min(capacity_hint)).unwrap_or(0);
    let mut out = Vec::with_capacity(capacity);
    let mut chunk = vec![0u8; CHUNK_BYTES.min(usize::try_from(expected).unwrap_or(CHUNK_BYTES))];
    let mut got = 0u64;
    let mut non_finite = false;
    while got < expected {
        let n = read_full(&mut r, &mut chunk, "reading voxel data")?;
        if n == 0 {
            break;
        }
        got += n as u64;
        let whole = n - n % dtype.size();
        let bytes = &chunk[..whole];
        non_finite |= match dtype {
            DataType::U8 => decode_chunk::<u8>(bytes, big_endian, scaling, &mut out),
            DataType::I8 => decode_chunk::<i8>(bytes, big_endian, scaling, &mut out),
            DataType::U16 => decode_chunk::<u16>(bytes, big_endian, scaling, &mut out),
            DataType::I16 => decode_chunk::<i16>(bytes, big_endian, scaling, &mut out),
            DataType::U32 => decode_chunk::<u32>(bytes, big_endian, scaling, &mut out),
            DataType::I32 => decode_chunk::<i32>(bytes, big_endian, scaling, &mut out),
            DataType::U64 => decode_chunk::<u64>(bytes, big_endian, scaling, &mut out),
            DataType::I64 => decode_chunk::<i64>(bytes, big_endian, scaling, &mut out),
            DataType::F32 => decode_chunk::<f32>(bytes, big_endian, scaling, &mut out),
            DataType::F64 => decode_chunk::<f64>(bytes, big_endian, scaling, &mut out),
        };
        if whole != n {
            break; // only the final, short read can end mid-sample
        }
    }
    if got < expected {
        return Err(ImagingError::Truncated { expected, got });
    }
    Ok((out, non_finite))
}
