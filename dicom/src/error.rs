//! [`DicomError`]: every way reading a series or writing a SEG can fail.

use thiserror::Error;

/// The one error type of `ferrolabel-dicom`. Every variant names its cause in its message;
/// all but [`DicomError::Io`] and [`DicomError::Encode`] are the client's fault (the server
/// answers them 4xx).
#[derive(Debug, Error)]
pub enum DicomError {
    /// A file is not DICOM (no Part 10 header, or no dataset could be parsed from it).
    #[error("{name} is not a DICOM file: {reason}")]
    NotDicom {
        /// The file's name in the upload.
        name: String,
        /// What the parser said.
        reason: String,
    },
    /// A DICOM file is truncated or its contents cannot be decoded.
    #[error("{name} is truncated or corrupt: {reason}")]
    Corrupt {
        /// The file's name in the upload.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// A file has no Pixel Data element.
    #[error("{name} has no pixel data")]
    NoPixelData {
        /// The file's name in the upload.
        name: String,
    },
    /// The series is not CT.
    #[error("modality {modality} is not supported (only CT series are accepted)")]
    NotCt {
        /// The Modality attribute found.
        modality: String,
    },
    /// The pixel data is encoded with a transfer syntax this build cannot decode.
    #[error("unsupported transfer syntax {uid} ({name}) in {file}")]
    UnsupportedTransferSyntax {
        /// The transfer syntax UID.
        uid: String,
        /// Its name, or "unknown".
        name: String,
        /// The file's name in the upload.
        file: String,
    },
    /// A required attribute is absent or unreadable.
    #[error("{file}: missing or invalid {attribute}")]
    MissingAttribute {
        /// The file's name in the upload.
        file: String,
        /// The attribute's keyword.
        attribute: &'static str,
    },
    /// Pixel layout that is not a single grey-level plane (colour, more than 16 bits, ...).
    #[error("unsupported image: {0}")]
    UnsupportedImage(String),
    /// The upload holds several series and none was chosen.
    #[error("the upload holds {} series ({}); choose one", uids.len(), uids.join(", "))]
    MultipleSeries {
        /// The SeriesInstanceUIDs found.
        uids: Vec<String>,
    },
    /// The chosen series is not in the upload.
    #[error("series {0} is not in the upload")]
    SeriesNotFound(String),
    /// Nothing to assemble.
    #[error("the upload holds no DICOM image")]
    Empty,
    /// Slices of one series disagree on size, orientation or pixel spacing.
    #[error("inconsistent slices: {0}")]
    Inconsistent(String),
    /// Two slices at the same position.
    #[error("duplicated slice: {0}")]
    DuplicateSlice(String),
    /// Gaps between slices are uneven beyond the tolerance (a slice is missing, or the
    /// series mixes spacings).
    #[error("uneven slice spacing (missing slice?): {0}")]
    UnevenSpacing(String),
    /// Slices do not stack along the normal of their plane (gantry tilt or sheared geometry).
    #[error("gantry tilt or sheared geometry: {0}")]
    Sheared(String),
    /// A zip entry whose name would escape the extraction folder, or an absolute path.
    #[error("unsafe zip entry name {0:?}")]
    UnsafeZipEntry(String),
    /// The zip archive is malformed.
    #[error("bad zip archive: {0}")]
    BadZip(String),
    /// A size or count limit was exceeded (file count, bytes, voxels, zip ratio).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// A label map or segment list handed to the SEG writer does not fit the series.
    #[error("invalid segmentation input: {0}")]
    InvalidLabels(String),
    /// A file handed to the SEG reader is not a DICOM Segmentation.
    #[error("not a DICOM Segmentation: {0}")]
    NotSegmentation(String),
    /// A Segmentation that does not lie on the series' grid (another frame of reference,
    /// size, orientation or pixel spacing, or a frame on no slice of the series).
    #[error("the segmentation does not lie on the series' grid: {0}")]
    SegMismatch(String),
    /// A volume could not be built (propagated from `ferrolabel-imaging`).
    #[error(transparent)]
    Imaging(#[from] ferrolabel_imaging::ImagingError),
    /// Reading a file from disk failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding a DICOM object failed (a bug, not bad input).
    #[error("encoding DICOM failed: {0}")]
    Encode(String),
}

impl DicomError {
    /// Whether the error is the input's fault (answer 4xx) rather than the server's.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, DicomError::Io { .. } | DicomError::Encode(_))
    }
}

/// `Result` with [`DicomError`].
pub type Result<T> = std::result::Result<T, DicomError>;
