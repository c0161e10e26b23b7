//! Logging: `tracing` to stderr and, for the server, to `<studies>/.ferrolabel/logs/app.log`
//! (served by `/logs/`). The level comes from `RUST_LOG` (default `info` for the server, `warn`
//! for one-shot commands).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// A `MakeWriter` appending to one shared file.
#[derive(Clone)]
pub struct FileWriter(Arc<Mutex<File>>);

/// One write handle of a [`FileWriter`].
pub struct FileHandle(Arc<Mutex<File>>);

impl Write for FileHandle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = FileHandle;

    fn make_writer(&'a self) -> Self::Writer {
        FileHandle(self.0.clone())
    }
}

/// The default field formatter under another type, so that the file layer formats (and caches)
/// span fields separately from the coloured stderr layer: no ANSI codes end up in the file.
struct PlainFields(tracing_subscriber::fmt::format::DefaultFields);

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for PlainFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logs to stderr only.
pub fn init_stderr(default_level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(default_level))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The file layer's writer of this process, once a subscriber with a file layer is installed.
static FILE_WRITER: std::sync::OnceLock<FileWriter> = std::sync::OnceLock::new();

/// Logs to stderr and appends to `log_file` (created with its folder).
pub fn init_with_file(default_level: &str, log_file: &Path) -> std::io::Result<()> {
    init_file(default_level, log_file, true)
}

/// Appends to `log_file` only (a test process that serves in-process: its stderr stays
/// quiet). A later call to either function points the file layer at its new `log_file`: a
/// process that starts one server after another logs each into its own file.
pub fn init_file_only(default_level: &str, log_file: &Path) -> std::io::Result<()> {
    init_file(default_level, log_file, false)
}

fn init_file(default_level: &str, log_file: &Path, stderr: bool) -> std::io::Result<()> {
    if let Some(dir) = log_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)?;
    if let Some(w) = FILE_WRITER.get() {
        *w.0.lock().unwrap_or_else(|e| e.into_inner()) = file;
        return Ok(());
    }
    let writer = FileWriter(Arc::new(Mutex::new(file)));
    let _ = FILE_WRITER.set(writer.clone());
    let _ = tracing_subscriber::registry()
        .with(filter(default_level))
        .with(stderr.then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr)))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .fmt_fields(PlainFields(Default::default()))
                .with_writer(writer),
        )
        .try_init();
    Ok(())
}
