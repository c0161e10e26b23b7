//! Untrusted input: the files of an upload, from paths, memory or one zip archive, read under
//! [`InputLimits`] before anything is parsed.

use std::io::{Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use crate::error::{DicomError, Result};

/// Bounds on an upload, checked before bytes are read or decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Most files in one upload (zip entries that are files, or paths).
    pub max_files: usize,
    /// Largest single file, in bytes (after decompression for zip entries).
    pub max_file_bytes: u64,
    /// Largest sum of all files, in bytes (after decompression).
    pub max_total_bytes: u64,
    /// Largest ratio of a zip entry's declared size to its compressed size (deflate cannot
    /// exceed about 1032 : 1; a header that declares more is lying).
    pub max_zip_ratio: u64,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_files: 4096,
            max_file_bytes: 1 << 30,
            max_total_bytes: 4 << 30,
            max_zip_ratio: 1032,
        }
    }
}

/// One file of an upload: its name (for messages) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedBytes {
    /// The name the file had in the upload (zip entry name, file name).
    pub name: String,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// One file of an upload kept on disk: the name it had in the upload (for messages) and
/// where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPath {
    /// The name the file had in the upload (zip entry name, client file name).
    pub name: String,
    /// The file on disk.
    pub path: PathBuf,
}

impl NamedPath {
    /// A file on disk called by its own file name.
    pub fn from_path(path: &Path) -> NamedPath {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        NamedPath {
            name,
            path: path.to_path_buf(),
        }
    }
}

fn limit(msg: String) -> DicomError {
    DicomError::LimitExceeded(msg)
}

/// The count and size limits, shared by files in memory and on disk: `sizes` yields each
/// file's name and length (or the error of finding it out); the total is checked as it grows,
/// so nothing past the file that breaks a limit is looked at.
fn check_sizes<'a>(
    count: usize,
    sizes: impl Iterator<Item = Result<(&'a str, u64)>>,
    limits: &InputLimits,
) -> Result<()> {
    if count > limits.max_files {
        return Err(limit(format!(
            "{count} files, more than the limit of {}",
            limits.max_files
        )));
    }
    let mut total = 0u64;
    for size in sizes {
        let (name, len) = size?;
        if len > limits.max_file_bytes {
            return Err(limit(format!(
                "{name} has {len} bytes, more than the limit of {}",
                limits.max_file_bytes
            )));
        }
        total = total.saturating_add(len);
        if total > limits.max_total_bytes {
            return Err(limit(format!(
                "the files hold more than the limit of {} bytes",
                limits.max_total_bytes
            )));
        }
    }
    Ok(())
}

/// Checks a set of in-memory files against the count and size limits.
pub fn check_files(files: &[NamedBytes], limits: &InputLimits) -> Result<()> {
    let sizes = files
        .iter()
        .map(|f| Ok((f.name.as_str(), f.bytes.len() as u64)));
    check_sizes(files.len(), sizes, limits)
}

/// Checks files on disk against the count and size limits (by their metadata, before
/// anything is read).
pub fn check_paths(files: &[NamedPath], limits: &InputLimits) -> Result<()> {
    let sizes = files.iter().map(|f| {
        let meta = std::fs::metadata(&f.path).map_err(|e| DicomError::Io {
            context: format!("reading {}", f.path.display()),
            source: e,
        })?;
        Ok((f.name.as_str(), meta.len()))
    });
    check_sizes(files.len(), sizes, limits)
}

/// Reads files from disk (all checked against the limits by their metadata before any is read).
pub fn read_paths<P: AsRef<Path>>(paths: &[P], limits: &InputLimits) -> Result<Vec<NamedBytes>> {
    let files: Vec<NamedPath> = paths
        .iter()
        .map(|p| NamedPath::from_path(p.as_ref()))
        .collect();
    check_paths(&files, limits)?;
    files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f.path).map_err(|e| DicomError::Io {
                context: format!("reading {}", f.path.display()),
                source: e,
            })?;
            Ok(NamedBytes {
                name: f.name,
                bytes,
            })
        })
        .collect()
}

/// Whether `bytes` start like a zip archive (a local file header or an empty archive).
pub fn looks_like_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// Whether a zip entry name stays inside the folder it would be extracted to: relative, no
/// `..` component (with `/` or `\\` separators), no drive letter, no NUL.
fn safe_name(name: &str) -> bool {
    !name.starts_with('/')
        && !name.starts_with('\\')
        && !name.contains('\0')
        && !name.contains(':')
        && name.split(['/', '\\']).all(|part| part != "..")
}

/// Checks a zip archive's directory, before anything is decompressed, and lists the file
/// entries to read: `(index, name, declared size)`. See [`read_zip`] for what is refused.
fn zip_plan<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    limits: &InputLimits,
) -> Result<Vec<(usize, String, u64)>> {
    if archive.len() > limits.max_files.saturating_mul(2).max(16) {
        return Err(limit(format!(
            "the zip has {} entries, more than the limit of {} files",
            archive.len(),
            limits.max_files
        )));
    }
    let mut wanted = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| DicomError::BadZip(e.to_string()))?;
        let name = entry.name().to_string();
        if entry.enclosed_name().is_none() || !safe_name(&name) {
            return Err(DicomError::UnsafeZipEntry(name));
        }
        if entry.is_dir() {
            continue;
        }
        if entry.is_symlink() {
            return Err(DicomError::UnsafeZipEntry(name));
        }
        let declared = entry.size();
        let compressed = entry.compressed_size();
        if declared > limits.max_file_bytes {
            return Err(limit(format!(
                "zip entry {name} declares {declared} bytes, more than the limit of {}",
                limits.max_file_bytes
            )));
        }
        if declared > compressed.max(1).saturating_mul(limits.max_zip_ratio) {
            return Err(limit(format!(
                "zip entry {name} declares {declared} bytes from {compressed} compressed, a \
                 ratio over the limit of {} : 1",
                limits.max_zip_ratio
            )));
        }
        total = total.saturating_add(declared);
        if total > limits.max_total_bytes {
            return Err(limit(format!(
                "the zip declares more than the limit of {} bytes",
                limits.max_total_bytes
            )));
        }
        wanted.push((i, name, declared));
        if wanted.len() > limits.max_files {
            return Err(limit(format!(
                "the zip holds more than the limit of {} files",
                limits.max_files
            )));
        }
    }
    Ok(wanted)
}

/// Copies entry `i` (declared `declared` bytes) into `out`, never past the declared size.
fn copy_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    i: usize,
    name: &str,
    declared: u64,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let entry = archive
        .by_index(i)
        .map_err(|e| DicomError::BadZip(format!("{name}: {e}")))?;
    let n = std::io::copy(&mut entry.take(declared + 1), out)
        .map_err(|e| DicomError::BadZip(format!("{name}: {e}")))?;
    if n != declared {
        return Err(DicomError::BadZip(format!(
            "{name}: declares {declared} bytes but holds {n}{}",
            if n > declared { " or more" } else { "" }
        )));
    }
    Ok(())
}

/// Reads every file entry of a zip archive held in memory.
///
/// Refused, before anything is decompressed: an entry name that is absolute or climbs out
/// with `..` (the whole archive is refused, not just the entry), more file entries than
/// [`InputLimits::max_files`], declared sizes over the per-file or total limits, and a declared
/// size more than [`InputLimits::max_zip_ratio`] times the compressed size. While reading, an
/// entry whose actual size differs from its declared size is refused (never read past it).
/// Directory entries are skipped; symbolic links are refused.
pub fn read_zip(bytes: &[u8], limits: &InputLimits) -> Result<Vec<NamedBytes>> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| DicomError::BadZip(e.to_string()))?;
    let wanted = zip_plan(&mut archive, limits)?;
    let mut out = Vec::with_capacity(wanted.len());
    for (i, name, declared) in wanted {
        let mut buf = Vec::with_capacity(declared as usize);
        copy_entry(&mut archive, i, &name, declared, &mut buf)?;
        out.push(NamedBytes { name, bytes: buf });
    }
    Ok(out)
}

/// Extracts the file entries of the zip archive at `zip_path` into the folder `dest`, one
/// file at a time (bounded memory), under names of its own (`00000.dcm`, ...: an entry's name
/// never becomes a path). The same checks as [`read_zip`], all made before anything is
/// written. On an error, files already written stay in `dest` (the caller owns the folder).
pub fn extract_zip(zip_path: &Path, dest: &Path, limits: &InputLimits) -> Result<Vec<NamedPath>> {
    let io = |what: &Path| {
        let context = format!("reading {}", what.display());
        move |e| DicomError::Io { context, source: e }
    };
    let file = std::fs::File::open(zip_path).map_err(io(zip_path))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| DicomError::BadZip(e.to_string()))?;
    let wanted = zip_plan(&mut archive, limits)?;
    let mut out = Vec::with_capacity(wanted.len());
    for (n, (i, name, declared)) in wanted.into_iter().enumerate() {
        let path = dest.join(format!("{n:05}.dcm"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io(&path))?);
        copy_entry(&mut archive, i, &name, declared, &mut w)?;
        std::io::Write::flush(&mut w).map_err(io(&path))?;
        out.push(NamedPath { name, path });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn reads_entries_and_refuses_traversal() {
        let z = zip_of(&[("a/one.dcm", b"hello"), ("two", b"world")]);
        let files = read_zip(&z, &InputLimits::default()).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].name, "a/one.dcm");
        assert_eq!(files[1].bytes, b"world");
        for bad in ["../evil", "/abs/path", "a/../../b"] {
            let z = zip_of(&[(bad, b"x")]);
            let err = read_zip(&z, &InputLimits::default()).unwrap_err();
            assert!(matches!(err, DicomError::UnsafeZipEntry(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_too_many_files_and_big_totals() {
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let z = zip_of(&entries);
        let small = InputLimits {
            max_files: 10,
            ..InputLimits::default()
        };
        assert!(matches!(
            read_zip(&z, &small),
            Err(DicomError::LimitExceeded(_))
        ));
        let zeros = vec![0u8; 1 << 20];
        let z = zip_of(&[("zeros", &zeros)]);
        let tight = InputLimits {
            max_zip_ratio: 100,
            ..InputLimits::default()
        };
        let err = read_zip(&z, &tight).unwrap_err();
        assert!(err.to_string().contains("ratio"), "{err}");
        let tight = InputLimits {
            max_total_bytes: 1000,
            ..InputLimits::default()
        };
        assert!(matches!(
            read_zip(&z, &tight),
            Err(DicomError::LimitExceeded(_))
        ));
        assert!(matches!(
            read_zip(b"PK\x03\x04garbage", &InputLimits::default()),
            Err(DicomError::BadZip(_))
        ));
    }

    #[test]
    fn an_entry_larger_than_declared_is_refused() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file("big", opts).unwrap();
        w.write_all(&[7u8; 5000]).unwrap();
        let mut z = w.finish().unwrap().into_inner();
        // declare 100 bytes (local header offset 22, central directory offset 24)
        let local = 22;
        z[local..local + 4].copy_from_slice(&100u32.to_le_bytes());
        let central = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        z[central + 24..central + 28].copy_from_slice(&100u32.to_le_bytes());
        let err = read_zip(&z, &InputLimits::default()).unwrap_err();
        assert!(matches!(err, DicomError::BadZip(_)), "{err}");
    }
}
