//! Resource limits applied to untrusted image files before anything is allocated.

use crate::error::{ImagingError, Result};

/// Upper bounds that a file must respect before the reader allocates for it.
///
/// Every reader checks the declared sizes against these limits right after parsing the
/// header, with overflow-checked arithmetic, and reads compressed streams through
/// `Read::take` so that a small gzip bomb cannot make it decompress (or allocate) more than
/// the header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted voxel count (product of the three spatial dimensions).
    pub max_voxels: u64,
    /// Largest accepted byte count of header, extensions and voxel data together, after
    /// decompression (a gzip stream is never decompressed past it).
    pub max_decompressed_bytes: u64,
    /// Largest accepted size of NIfTI header extensions, and of an NRRD text header.
    pub max_extension_bytes: u64,
    /// Largest accepted ratio of decompressed to compressed size for a gzip-compressed file
    /// whose compressed size is known: a header that declares more than the stream can hold is
    /// refused before anything is decompressed or allocated. The default is deflate's own
    /// ceiling (about 1032 : 1), which no genuine file exceeds; lower it to refuse highly
    /// compressible uploads (an all-zero 512³ label map is close to the ceiling).
    pub max_gzip_ratio: u64,
}

impl Limits {
    /// Default voxel limit: 512 × 512 × 2048.
    pub const DEFAULT_MAX_VOXELS: u64 = 512 * 512 * 2048;
    /// Default decompressed-size limit: 4 GiB.
    pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;
    /// Default extension/header-size limit: 64 MiB.
    pub const DEFAULT_MAX_EXTENSION_BYTES: u64 = 64 << 20;
    /// Default gzip ratio limit: deflate's maximum expansion, 1032 : 1.
    pub const DEFAULT_MAX_GZIP_RATIO: u64 = 1032;

    /// Checks a voxel grid against [`Limits::max_voxels`] and returns its voxel count.
    pub fn check_voxels(&self, dims: [usize; 3]) -> Result<u64> {
        let count = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| {
                ImagingError::LimitExceeded(format!(
                    "{} x {} x {} voxels overflows a 64-bit count",
                    dims[0], dims[1], dims[2]
                ))
            })?;
        if count > self.max_voxels {
            return Err(ImagingError::LimitExceeded(format!(
                "{} x {} x {} = {count} voxels is more than the limit of {}",
                dims[0], dims[1], dims[2], self.max_voxels
            )));
        }
        Ok(count)
    }

    /// Checks the total decompressed size (header + extensions + voxel data).
    pub fn check_decompressed(&self, bytes: u64) -> Result<()> {
        if bytes > self.max_decompressed_bytes {
            return Err(ImagingError::LimitExceeded(format!(
                "the image needs {bytes} bytes, more than the limit of {}",
                self.max_decompressed_bytes
            )));
        }
        Ok(())
    }

    /// Checks that `compressed` bytes of gzip can hold `decompressed` bytes under
    /// [`Limits::max_gzip_ratio`].
    pub fn check_gzip_ratio(&self, compressed: u64, decompressed: u64) -> Result<()> {
        let most = compressed.saturating_mul(self.max_gzip_ratio);
        if decompressed > most {
            return Err(ImagingError::LimitExceeded(format!(
                "the header declares {decompressed} bytes, more than a {compressed}-byte gzip \
                 stream may hold at the limit of {} : 1",
                self.max_gzip_ratio
            )));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_voxels: Self::DEFAULT_MAX_VOXELS,
            max_decompressed_bytes: Self::DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_extension_bytes: Self::DEFAULT_MAX_EXTENSION_BYTES,
            max_gzip_ratio: Self::DEFAULT_MAX_GZIP_RATIO,
        }
    }
}
