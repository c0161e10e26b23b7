//! Files a killed process leaves behind: checkpoint temp files.
//!
//! `save_state_dict` writes `<dir>/.<name>.<pid>.tmp`, fsyncs it and renames it over
//! `<dir>/<name>`. A process killed before the rename leaves the temp file; the checkpoint
//! itself is always the old or the new one, whole. At start the server (and `ferrolabel dev
//! write-checkpoints`) deletes such temp files whose writer process no longer exists, so that no
//! torn file stays visible next to the weights.

use std::path::Path;

/// Whether `name` is a checkpoint temp file `.<file>.<pid>.tmp`; returns the pid.
fn checkpoint_temp_pid(name: &str) -> Option<u32> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (file, pid) = inner.rsplit_once('.')?;
    if file.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Deletes the checkpoint temp files in `dir` whose writer is gone; returns how many. A
/// missing folder is not an error.
pub fn remove_stale_checkpoint_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(checkpoint_temp_pid) else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::info!(path = %e.path().display(), "removed a torn checkpoint temp file");
                removed += 1;
            }
            Err(err) => tracing::warn!(path = %e.path().display(), "cannot remove: {err}"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names() {
        assert_eq!(checkpoint_temp_pid(".model.pt.1234.tmp"), Some(1234));
        assert_eq!(checkpoint_temp_pid(".model_lowres.pt.7.tmp"), Some(7));
        assert_eq!(checkpoint_temp_pid("model.pt"), None);
        assert_eq!(checkpoint_temp_pid(".model.pt.tmp"), None);
        assert_eq!(checkpoint_temp_pid(".x.abc.tmp"), None);
        // the datastore's `.<stem>.<uuid>.tmp` files are not checkpoint temps
        assert_eq!(
            checkpoint_temp_pid(".a.6f2c0b1e-9a8b-4c4d-9e0f-1a2b3c4d5e6f.tmp"),
            None
        );
    }

    #[test]
    fn removes_only_dead_writers() {
        let dir = tempfile::tempdir().unwrap();
        // no process has a pid that large (Linux caps pids at 2^22); our own pid is alive
        let dead = dir.path().join(".model.pt.4000000000.tmp");
        let live = dir
            .path()
            .join(format!(".model.pt.{}.tmp", std::process::id()));
        let keep = dir.path().join("model.pt");
        for p in [&dead, &live, &keep] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_checkpoint_temps(dir.path()), 1);
        assert!(!dead.exists() && live.exists() && keep.exists());
        assert_eq!(remove_stale_checkpoint_temps(&dir.path().join("none")), 0);
    }
}
