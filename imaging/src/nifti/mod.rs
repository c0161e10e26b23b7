//! Single-file NIfTI-1 images (`.nii`, `.nii.gz`): the raw header, the reader and the writers.

mod geometry;
mod header;
mod read;
mod write;

pub use header::{Header, DEFAULT_VOX_OFFSET, HEADER_SIZE, MAGIC_PAIR, MAGIC_SINGLE};
pub(crate) use read::GZIP_MAGIC;
pub use read::{read_nifti, read_nifti_bytes, read_nifti_stream};
pub use write::{
    encode_label_nifti, encode_label_nifti_u16, encode_nifti, encode_nifti_f32, write_label_nifti,
    write_label_nifti_u16, write_nifti_f32,
};
