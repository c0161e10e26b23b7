//! The processes of a `torchrun` training ([`super::torchrun`]): started in a session of their
//! own, found by the run's marker variable, killed; a Slurm job of the run cancelled
//! ([`scancel`]); and the atomic replacement of the active weights by a checkpoint of the run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::Result;

/// The environment variable that marks every process of one run (the agent, the ranks and their
/// data loader workers inherit it): a stop kills every process that carries it.
pub(super) const MARKER_VAR: &str = "FERROLABEL_TORCHRUN_RUN";

/// Starts the child in a session of its own (its pid is its process group) and asks the
/// kernel to SIGKILL it when the thread that started it ends.
#[allow(unsafe_code)]
pub(super) fn own_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before `exec` and calls only
    // async-signal-safe functions (`setsid`, `prctl`, `getppid`); its errors are built from
    // raw OS codes without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Live (not zombie) processes whose environment holds `MARKER_VAR=marker`.
pub fn marked_processes(marker: &str) -> Vec<u32> {
    let want = format!("{MARKER_VAR}={marker}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let live = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace()
                        .next()
                        .map(|st| !matches!(st, "Z" | "X" | "x"))
                })
                .unwrap_or(false);
            live && std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILLs every process of the run `marker` (and its process group) until none is left or
/// `limit` has passed; answers how many it killed.
pub(super) fn kill_marked(marker: &str, limit: Duration) -> usize {
    let t0 = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let pids = marked_processes(marker);
        if pids.is_empty() || t0.elapsed() > limit {
            return seen.len();
        }
        for pid in pids {
            seen.insert(pid);
            signal(pid, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Cancels the Slurm job of the run `marker` (its job name, see
/// [`super::torchrun_cmd::sbatch_script`]): `scancel <id>` when the id is known, else
/// `scancel --name=<marker>`; then waits (up to `limit`) until no job of that name is pending,
/// running or completing. Answers how long that took, or why it could not tell.
pub(super) fn scancel(
    id: Option<&str>,
    marker: &str,
    limit: Duration,
) -> std::result::Result<Duration, String> {
    let t0 = Instant::now();
    let mut cmd = Command::new("scancel");
    match id {
        Some(id) => cmd.arg(id),
        None => cmd.arg(format!("--name={marker}")),
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run scancel: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scancel failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    loop {
        let q = Command::new("squeue")
            .args(["-h", "-o", "%i", &format!("--name={marker}")])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run squeue: {e}"))?;
        if q.status.success() && q.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "the Slurm job {} is still in the queue {limit:?} after scancel",
                id.unwrap_or(marker)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILL to `pid`, and to its process group when `group`.
#[allow(unsafe_code)]
pub(super) fn signal(pid: u32, group: bool) {
    // SAFETY: `kill`/`killpg` have no memory effects in this process. The pids are this run's
    // (its child, or processes carrying its marker, checked just before).
    unsafe {
        if group {
            libc::killpg(pid as libc::pid_t, libc::SIGKILL);
        }
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Copies `src` over `dst` atomically (temp file in `dst`'s folder, fsync, rename).
pub(super) fn replace_atomically(src: &Path, dst: &Path) -> Result<()> {
    let dir = dst.parent().unwrap_or(Path::new("."));
    let name = dst
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("weights");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let copied = std::fs::copy(src, &tmp)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, dst));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
