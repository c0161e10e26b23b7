//! [`DicomWebError`]: every way talking to a DICOMweb server can fail.

use ferrolabel_dicom::DicomError;
use thiserror::Error;

/// The one error type of `ferrolabel-dicomweb`. Each variant names the URL or the cause in its
/// message. The server's error table (`server/src/error.rs`) maps them to HTTP statuses: a
/// timeout to 504, the PACS's faults ([`DicomWebError::is_gateway_error`]) to 502, and
/// [`Series`](DicomWebError::Series) (a series the PACS holds but that is not a usable CT) to 422.
#[derive(Debug, Error)]
pub enum DicomWebError {
    /// The settings are unusable (bad base URL, header values, ...).
    #[error("DICOMweb settings: {0}")]
    Config(String),
    /// The PACS could not be reached (connection refused, DNS, TLS, connection reset).
    #[error("PACS unreachable at {url}: {detail}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// What the HTTP client said.
        detail: String,
    },
    /// The PACS did not answer (or stopped sending) within the configured timeout.
    #[error("PACS timed out at {url}")]
    Timeout {
        /// The URL requested.
        url: String,
    },
    /// The PACS answered with a status other than 2xx.
    #[error("PACS answered {status} at {url}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the answer's body (at most 512 bytes, lossy UTF-8).
        body: String,
    },
    /// The PACS answered 2xx with something that is not what DICOMweb promises: bad JSON, a
    /// broken or truncated multipart, a part that is not DICOM, an answer over the limits.
    #[error("PACS answered garbage at {url}: {detail}")]
    BadAnswer {
        /// The URL requested.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// STOW-RS: the PACS refused some of the instances sent (FailedSOPSequence).
    #[error("PACS refused to store {failed} instance(s) at {url}: {detail}")]
    Rejected {
        /// The URL requested.
        url: String,
        /// How many instances it refused.
        failed: usize,
        /// Failure reasons it gave.
        detail: String,
    },
    /// The series was retrieved but cannot be assembled as a CT volume (not CT, gantry tilt,
    /// missing slices, ...): the series' fault, not the PACS's.
    #[error("series {series}: {source}")]
    Series {
        /// The SeriesInstanceUID.
        series: String,
        /// Why assembly refused it.
        #[source]
        source: DicomError,
    },
    /// Asked for something this client does not implement (fetching by frame).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Local file system trouble (temp folder, cache).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl DicomWebError {
    /// Whether the PACS (rather than this server or the series itself) is at fault: the
    /// errors a server answers 502 or 504.
    pub fn is_gateway_error(&self) -> bool {
        matches!(
            self,
            DicomWebError::Unreachable { .. }
                | DicomWebError::Timeout { .. }
                | DicomWebError::Status { .. }
                | DicomWebError::BadAnswer { .. }
                | DicomWebError::Rejected { .. }
        )
    }

    /// Classifies a transport error of `reqwest` for `url`.
    pub(crate) fn from_reqwest(url: &str, e: reqwest::Error) -> DicomWebError {
        if e.is_timeout() {
            return DicomWebError::Timeout { url: url.into() };
        }
        if e.is_decode() {
            return DicomWebError::BadAnswer {
                url: url.into(),
                detail: full_chain(&e),
            };
        }
        DicomWebError::Unreachable {
            url: url.into(),
            detail: full_chain(&e),
        }
    }

    pub(crate) fn bad(url: &str, detail: impl Into<String>) -> DicomWebError {
        DicomWebError::BadAnswer {
            url: url.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> DicomWebError {
        DicomWebError::Io {
            context: context.into(),
            source,
        }
    }
}

/// An error and its sources, joined with `: ` (reqwest's own message hides the cause).
fn full_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `Result` with [`DicomWebError`].
pub type Result<T> = std::result::Result<T, DicomWebError>;
