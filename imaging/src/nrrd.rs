//! NRRD (`.nrrd`, attached header) label maps for 3D Slicer: a uint8 writer and a small reader
//! for what such tools write (scalar 3-D volumes, raw or gzip, LPS/RAS/LAS space).
//!
//! NRRD world coordinates are in the declared `space`; this crate's affines are RAS+, so an
//! LPS file has its first two world rows negated on the way in and out.

use std::io::Write;
use std::path::Path;

use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::affine::{self, Affine};
use crate::dtype::{read_samples, DataType};
use crate::error::{ImagingError, Result};
use crate::limits::Limits;
use crate::volume::Volume;

/// Sign of each world axis when converting between LPS and RAS.
const LPS_FLIP: [f64; 3] = [-1.0, -1.0, 1.0];

/// Formats a number for a header (shortest exact form, no negative zero).
fn num(v: f64) -> String {
    format!("{}", v + 0.0)
}

fn vector(v: [f64; 3]) -> String {
    format!("({},{},{})", num(v[0]), num(v[1]), num(v[2]))
}

/// Encodes a uint8 label map as an attached-header NRRD file (`NRRD0004`, LPS space), the
/// RAS+ `affine` converted to `space directions` and `space origin`. `labels` are in NIfTI
/// order (x fastest), which is also NRRD's.
pub fn encode_label_nrrd(
    labels: &[u8],
    dims: [usize; 3],
    affine: &Affine,
    gzip: bool,
) -> Result<Vec<u8>> {
    let want = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if want != Some(labels.len()) || dims.contains(&0) {
        return Err(ImagingError::InvalidArgument(format!(
            "{} labels do not fill a {} x {} x {} grid",
            labels.len(),
            dims[0],
            dims[1],
            dims[2]
        )));
    }
    if !affine::is_finite(affine) {
        return Err(ImagingError::InvalidArgument(
            "the affine has a non-finite entry".into(),
        ));
    }
    let column = |c: usize| std::array::from_fn(|r| LPS_FLIP[r] * affine[r][c]);
    let origin = std::array::from_fn(|r| LPS_FLIP[r] * affine[r][3]);
    let header = format!(
        "NRRD0004\n\
         # Complete NRRD file format specification at:\n\
         # http://teem.sourceforge.net/nrrd/format.html\n\
         type: uint8\n\
         dimension: 3\n\
         space: left-posterior-superior\n\
         sizes: {} {} {}\n\
         space directions: {} {} {}\n\
         kinds: domain domain domain\n\
         endian: little\n\
         encoding: {}\n\
         space origin: {}\n\n",
        dims[0],
        dims[1],
        dims[2],
        vector(column(0)),
        vector(column(1)),
        vector(column(2)),
        if gzip { "gzip" } else { "raw" },
        vector(origin),
    );
    let mut out = header.into_bytes();
    if gzip {
        let mut enc = GzEncoder::new(out, Compression::default());
        enc.write_all(labels)
            .map_err(|e| ImagingError::io("compressing the NRRD image", e))?;
        out = enc
            .finish()
            .map_err(|e| ImagingError::io("compressing the NRRD image", e))?;
    } else {
        out.extend_from_slice(labels);
    }
    Ok(out)
}

/// Writes [`encode_label_nrrd`]'s output to `path` (not atomically).
pub fn write_label_nrrd(
    path: &Path,
    labels: &[u8],
    dims: [usize; 3],
    affine: &Affine,
    gzip: bool,
) -> Result<()> {
    let bytes = encode_label_nrrd(labels, dims, affine, gzip)?;
    std::fs::write(path, bytes)
        .map_err(|e| ImagingError::io(format!("writing {}", path.display()), e))
}

/// Reads an NRRD file from disk; see [`read_nrrd_bytes`].
pub fn read_nrrd(path: &Path, limits: &Limits) -> Result<Volume> {
    let context = || format!("reading {}", path.display());
    let len = std::fs::metadata(path)
        .map_err(|e| ImagingError::io(context(), e))?
        .len();
    let budget = limits
        .max_decompressed_bytes
        .saturating_add(limits.max_extension_bytes);
    if len > budget {
        return Err(ImagingError::LimitExceeded(format!(
            "{} is {len} bytes, more than the limit of {budget}",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| ImagingError::io(context(), e))?;
    read_nrrd_bytes(&bytes, limits)
}

/// The parsed fields of an NRRD header that the reader uses.
#[derive(Default)]
struct Fields {
    dtype: Option<DataType>,
    dimension: Option<String>,
    sizes: Option<String>,
    encoding: Option<String>,
    endian: Option<String>,
    space: Option<String>,
    directions: Option<String>,
    origin: Option<String>,
    spacings: Option<String>,
    byte_skip: Option<String>,
}

fn parse_type(t: &str) -> Result<DataType> {
    Ok(match t {
        "signed char" | "int8" | "int8_t" => DataType::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => DataType::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            DataType::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => DataType::U16,
        "int" | "signed int" | "int32" | "int32_t" => DataType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => DataType::U32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => DataType::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => {
            DataType::U64
        }
        "float" => DataType::F32,
        "double" => DataType::F64,
        other => {
            return Err(ImagingError::Unsupported(format!(
                "NRRD type \"{other}\" is not supported"
            )))
        }
    })
}

/// Parses the text header; returns the fields and the offset where the data starts.
fn parse_header(bytes: &[u8], limits: &Limits) -> Result<(Fields, usize)> {
    if !bytes.starts_with(b"NRRD000") {
        return Err(ImagingError::nrrd("missing the NRRD000x magic"));
    }
    let mut fields = Fields::default();
    let mut pos = 0usize;
    let mut first = true;
    loop {
        let rest = &bytes[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(ImagingError::nrrd(
                "the header does not end with a blank line",
            ));
        };
        if (pos + nl) as u64 > limits.max_extension_bytes {
            return Err(ImagingError::LimitExceeded(format!(
                "the NRRD header is longer than the limit of {} bytes",
                limits.max_extension_bytes
            )));
        }
        let raw = &rest[..nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += nl + 1;
        if first {
            first = false;
            continue;
        }
        if raw.is_empty() {
            return Ok((fields, pos));
        }
        let line = std::str::from_utf8(raw)
            .map_err(|_| ImagingError::nrrd("the header is not UTF-8 text"))?;
        if line.starts_with('#') || line.contains(":=") {
            continue;
        }
        let Some((key, value)) = line.split_once(": ") else {
            return Err(ImagingError::nrrd(format!(
                "bad header line \"{}\"",
                line.escape_debug()
            )));
        };
        let value = value.trim().to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "type" => fields.dtype = Some(parse_type(&value)?),
            "dimension" => fields.dimension = Some(value),
            "sizes" => fields.sizes = Some(value),
            "encoding" => fields.encoding = Some(value),
            "endian" => fields.endian = Some(value),
            "space" => fields.space = Some(value),
            "space directions" => fields.directions = Some(value),
            "space origin" => fields.origin = Some(value),
            "spacings" => fields.spacings = Some(value),
            "byte skip" | "byteskip" => fields.byte_skip = Some(value),
            "data file" | "datafile" => {
                return Err(ImagingError::Unsupported(
                    "NRRD files with detached data (\"data file\") are not supported".into(),
                ))
            }
            "line skip" | "lineskip" if value != "0" => {
                return Err(ImagingError::Unsupported(
                    "NRRD \"line skip\" is not supported".into(),
                ))
            }
            _ => {}
        }
    }
}

/// Parses `(x,y,z)` vectors; exactly `N` of them.
fn parse_vectors<const N: usize>(text: &str, what: &str) -> Result<[[f64; 3]; N]> {
    let bad = || ImagingError::nrrd(format!("bad {what} \"{}\"", text.escape_debug()));
    let mut out = [[0.0; 3]; N];
    let mut rest = text.trim();
    for v in out.iter_mut() {
        let inner = rest.strip_prefix('(').ok_or_else(bad)?;
        let (inside, after) = inner.split_once(')').ok_or_else(bad)?;
        let parts: Vec<&str> = inside.split(',').collect();
        if parts.len() != 3 {
            return Err(bad());
        }
        for (x, p) in v.iter_mut().zip(parts) {
            *x = p.trim().parse::<f64>().map_err(|_| bad())?;
            if !x.is_finite() {
                return Err(bad());
            }
        }
        rest = after.trim_start();
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// World-axis signs that take the file's `space` to RAS.
fn space_to_ras(space: Option<&str>) -> Result<[f64; 3]> {
    match space.map(str::to_ascii_lowercase).as_deref() {
        // ITK, and so Slicer, reads a file without `space` as LPS.
        None | Some("left-posterior-superior") | Some("lps") => Ok(LPS_FLIP),
        Some("right-anterior-superior") | Some("ras") => Ok([1.0, 1.0, 1.0]),
        Some("left-anterior-superior") | Some("las") => Ok([-1.0, 1.0, 1.0]),
        Some(_) => Err(ImagingError::Unsupported(format!(
            "NRRD space \"{}\" is not supported",
            space.unwrap_or_default().escape_debug()
        ))),
    }
}

/// Reads an NRRD image with an attached header: a 3-D scalar volume of any integer or float
/// type, `raw` or `gzip` encoding, in LPS, RAS or LAS space (no `space` counts as LPS, as in
/// ITK). Values are cast to `f32`; the affine is converted to RAS+.
pub fn read_nrrd_bytes(bytes: &[u8], limits: &Limits) -> Result<Volume> {
    let (f, data_start) = parse_header(bytes, limits)?;
    let dtype = f
        .dtype
        .ok_or_else(|| ImagingError::nrrd("missing the \"type\" field"))?;
    match f.dimension.as_deref() {
        Some("3") => {}
        Some(d) => {
            return Err(ImagingError::Unsupported(format!(
                "NRRD dimension {d} is not supported (only 3-D scalar volumes)"
            )))
        }
        None => return Err(ImagingError::nrrd("missing the \"dimension\" field")),
    }
    let sizes = f
        .sizes
        .ok_or_else(|| ImagingError::nrrd("missing the \"sizes\" field"))?;
    let parsed: Vec<usize> = sizes
        .split_whitespace()
        .map(|s| s.parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()
        .filter(|v: &Vec<usize>| v.len() == 3)
        .ok_or_else(|| ImagingError::nrrd(format!("bad sizes \"{}\"", sizes.escape_debug())))?;
    let dims = [parsed[0], parsed[1], parsed[2]];
    let count = limits.check_voxels(dims)?;
    let data_bytes = count
        .checked_mul(dtype.size() as u64)
        .ok_or_else(|| ImagingError::LimitExceeded(format!("{count} voxels overflow")))?;
    limits.check_decompressed(data_bytes)?;
    let big_endian = match f.endian.as_deref() {
        None | Some("little") => false,
        Some("big") => true,
        Some(e) => {
            return Err(ImagingError::nrrd(format!(
                "bad endian \"{}\"",
                e.escape_debug()
            )))
        }
    };
    let flip = space_to_ras(f.space.as_deref())?;
    let mut affine = affine::IDENTITY;
    let columns = match (&f.directions, &f.spacings) {
        (Some(d), _) => parse_vectors::<3>(d, "space directions")?,
        (None, Some(s)) => {
            let mut cols = [[0.0; 3]; 3];
            for (n, tok) in s.split_whitespace().take(3).enumerate() {
                cols[n][n] = tok
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .unwrap_or(1.0);
            }
            cols
        }
        (None, None) => [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    };
    let origin = match &f.origin {
        Some(o) => parse_vectors::<1>(o, "space origin")?[0],
        None => [0.0; 3],
    };
    for r in 0..3 {
        for c in 0..3 {
            affine[r][c] = flip[r] * columns[c][r];
        }
        affine[r][3] = flip[r] * origin[r];
    }
    if let Some(why) = affine::singular_reason(&affine) {
        return Err(ImagingError::SingularGeometry(format!(
            "space directions / spacings: {why}"
        )));
    }
    let skip: i64 =
        match f.byte_skip.as_deref() {
            None => 0,
            Some(s) => s.parse().ok().filter(|&n: &i64| n >= -1).ok_or_else(|| {
                ImagingError::nrrd(format!("bad byte skip \"{}\"", s.escape_debug()))
            })?,
        };
    let body = &bytes[data_start..];
    let (data, non_finite) = match f.encoding.as_deref() {
        Some("raw") => {
            let start = if skip == -1 {
                (body.len() as u64).saturating_sub(data_bytes)
            } else {
                skip as u64
            };
            let start = usize::try_from(start).unwrap_or(usize::MAX).min(body.len());
            let avail = &body[start..];
            if (avail.len() as u64) < data_bytes {
                return Err(ImagingError::Truncated {
                    expected: data_bytes,
                    got: avail.len() as u64,
                });
            }
            read_samples(avail, dtype, big_endian, None, count, count)?
        }
        Some("gzip") | Some("gz") => {
            if skip < 0 {
                return Err(ImagingError::Unsupported(
                    "NRRD byte skip -1 with gzip is not supported".into(),
                ));
            }
            let skip = skip as u64;
            limits.check_gzip_ratio(body.len() as u64, skip.saturating_add(data_bytes))?;
            let mut dec = MultiGzDecoder::new(body);
            let skipped = std::io::copy(
                &mut std::io::Read::take(&mut dec, skip),
                &mut std::io::sink(),
            )
            .map_err(|e| ImagingError::io("decompressing NRRD data", e))?;
            if skipped < skip {
                return Err(ImagingError::Truncated {
                    expected: data_bytes,
                    got: 0,
                });
            }
            let ratio = limits.max_gzip_ratio.min(Limits::DEFAULT_MAX_GZIP_RATIO);
            let hint = (body.len() as u64).saturating_mul(ratio) / dtype.size() as u64;
            read_samples(&mut dec, dtype, big_endian, None, count, hint)?
        }
        Some(e) => {
            return Err(ImagingError::Unsupported(format!(
                "NRRD encoding \"{e}\" is not supported"
            )))
        }
        None => return Err(ImagingError::nrrd("missing the \"encoding\" field")),
    };
    Volume::from_parts(dims, data, affine, dtype, None, non_finite)
}
