//! Tensor records: the crate's in-memory form of one state_dict entry.

use crate::error::{CheckpointError, Result};

/// Element type of a tensor, as far as state_dict files need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `torch.float32`.
    F32,
    /// `torch.float64`.
    F64,
    /// `torch.float16` (IEEE half precision).
    F16,
    /// `torch.bfloat16`.
    BF16,
    /// `torch.int64`.
    I64,
    /// `torch.int32`.
    I32,
    /// `torch.int16`.
    I16,
    /// `torch.int8`.
    I8,
    /// `torch.uint8`.
    U8,
    /// `torch.bool` (one byte per element, 0 or 1).
    Bool,
}

/// Every dtype with its legacy typed-storage class name, as pickled by `torch.save`.
const STORAGE_CLASSES: [(DType, &str); 10] = [
    (DType::F32, "FloatStorage"),
    (DType::F64, "DoubleStorage"),
    (DType::F16, "HalfStorage"),
    (DType::BF16, "BFloat16Storage"),
    (DType::I64, "LongStorage"),
    (DType::I32, "IntStorage"),
    (DType::I16, "ShortStorage"),
    (DType::I8, "CharStorage"),
    (DType::U8, "ByteStorage"),
    (DType::Bool, "BoolStorage"),
];

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// The PyTorch name of the dtype, e.g. `"float32"`.
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// The `torch.<Name>Storage` class name used in pickled storage references.
    pub fn storage_class(self) -> &'static str {
        STORAGE_CLASSES
            .iter()
            .find(|(d, _)| *d == self)
            .map_or("FloatStorage", |(_, n)| n)
    }

    /// The dtype of a `torch.<Name>Storage` class name, if supported.
    pub fn from_storage_class(name: &str) -> Option<DType> {
        STORAGE_CLASSES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(d, _)| *d)
    }
}

/// One named tensor of a state_dict, with its data in contiguous C order.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRecord {
    /// The state_dict key, e.g. `"convInit.conv.weight"`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; empty for a zero-dimensional (scalar) tensor.
    pub shape: Vec<usize>,
    /// Element bytes: contiguous, little-endian, row-major (C order);
    /// length is `numel() * dtype.size()`.
    pub data: Vec<u8>,
}

impl TensorRecord {
    /// A float32 record from values in C order.
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        TensorRecord {
            name: name.into(),
            dtype: DType::F32,
            shape,
            data,
        }
    }

    /// Number of elements (product of the shape; 1 for a scalar), or `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Checks that `data` holds exactly `numel() * dtype.size()` bytes.
    pub fn validate(&self) -> Result<()> {
        let expected = self
            .numel()
            .and_then(|n| n.checked_mul(self.dtype.size()))
            .ok_or_else(|| CheckpointError::tensor(&self.name, "shape overflows usize"))?;
        if self.data.len() != expected {
            return Err(CheckpointError::tensor(
                &self.name,
                format!(
                    "data holds {} bytes, shape {:?} of {} needs {expected}",
                    self.data.len(),
                    self.shape,
                    self.dtype.torch_name()
                ),
            ));
        }
        Ok(())
    }

    /// The values converted to `f32` (exactly for F32/F16/BF16, rounded for F64).
    ///
    /// Fails for integer and bool tensors and when `data` does not match the shape.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        self.validate()?;
        let d = &self.data;
        let out = match self.dtype {
            DType::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F64 => d
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            DType::F16 => d
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::BF16 => d
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            other => {
                return Err(CheckpointError::tensor(
                    &self.name,
                    format!("{} is not a floating-point dtype", other.torch_name()),
                ))
            }
        };
        Ok(out)
    }
}

/// Converts IEEE 754 binary16 bits to `f32` (exact: every half value is an f32 value).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    if exp == 0 {
        // zero or subnormal: man * 2^-24, exact in f32
        let mag = man as f32 * (1.0 / 16_777_216.0);
        return if sign != 0 { -mag } else { mag };
    }
    let bits = if exp == 0x1f {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    #[test]
    fn to_f32_checks_dtype_and_length() {
        let r = TensorRecord::from_f32("a", vec![2], &[1.5, -2.0]);
        assert_eq!(r.to_f32_vec().unwrap(), vec![1.5, -2.0]);
        let bad = TensorRecord {
            shape: vec![3],
            ..r.clone()
        };
        assert!(bad.to_f32_vec().is_err());
        let int = TensorRecord {
            dtype: DType::I32,
            ..r.clone()
        };
        assert!(int.to_f32_vec().is_err());
        let bf = TensorRecord {
            name: "b".into(),
            dtype: DType::BF16,
            shape: vec![1],
            data: vec![0x80, 0x3f],
        };
        assert_eq!(bf.to_f32_vec().unwrap(), vec![1.0]);
    }

    #[test]
    fn storage_class_roundtrip() {
        for (d, n) in STORAGE_CLASSES {
            assert_eq!(d.storage_class(), n);
            assert_eq!(DType::from_storage_class(n), Some(d));
        }
        assert_eq!(DType::from_storage_class("ComplexFloatStorage"), None);
    }
}
