//! The `/datastore/dataset` archive: `image/<name>`, `label/<name>` for every final label, and
//! `metadata.json`, written to a temp file (deleted once sent).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempPath;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

fn options_for(path: &Path) -> SimpleFileOptions {
    let compressed = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
    let large = std::fs::metadata(path)
        .map(|m| m.len() >= u32::MAX as u64)
        .unwrap_or(false);
    SimpleFileOptions::default()
        .compression_method(if compressed {
            CompressionMethod::Stored
        } else {
            CompressionMethod::Deflated
        })
        .large_file(large)
}

fn base(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes the archive into a temp file in `tmp_dir`.
pub fn write(
    tmp_dir: &Path,
    pairs: &[(PathBuf, PathBuf)],
    metadata: &Value,
) -> std::io::Result<TempPath> {
    let tmp = tempfile::Builder::new()
        .prefix(".dataset-")
        .suffix(".zip")
        .tempfile_in(tmp_dir)?;
    let (file, path) = tmp.into_parts();
    let mut zip = zip::ZipWriter::new(BufWriter::new(file));
    let to_io = |e: zip::result::ZipError| std::io::Error::other(e.to_string());
    for (image, label) in pairs {
        for (folder, p) in [("image", image), ("label", label)] {
            zip.start_file(format!("{folder}/{}", base(p)), options_for(p))
                .map_err(to_io)?;
            std::io::copy(&mut File::open(p)?, &mut zip)?;
        }
    }
    zip.start_file("metadata.json", SimpleFileOptions::default())
        .map_err(to_io)?;
    zip.write_all(&serde_json::to_vec_pretty(metadata).unwrap_or_default())?;
    let mut inner = zip.finish().map_err(to_io)?;
    inner.flush()?;
    Ok(path)
}
