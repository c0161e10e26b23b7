//! The training worker process (`ferrolabel dev train-worker -`): what it reads, how it is
//! started so that it never outlives the server, and how a later attempt gets rid of a worker
//! an earlier one left behind.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrolabel_models::train::{TrainEvent, TrainJob, TrainOutcome};

use crate::error::{AppError, Result};

/// What the worker process reads: the job plus process settings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerRequest {
    /// The training job.
    pub job: TrainJob,
    /// libtorch intra-op threads (`None`: libtorch's default).
    pub threads: Option<i32>,
}

/// The last line a worker prints.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Finished {
    pub(super) finished: TrainOutcome,
}

/// Runs a worker: reads the [`WorkerRequest`] from `request_path` (`-`: standard input),
/// trains, and prints events as JSON lines on stdout.
pub fn run_worker(request_path: &Path) -> Result<()> {
    let text = if request_path == Path::new("-") {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map(|_| t)
    } else {
        std::fs::read_to_string(request_path)
    }
    .map_err(|e| AppError::InvalidParams(format!("cannot read the training request: {e}")))?;
    let req: WorkerRequest = serde_json::from_str(&text)
        .map_err(|e| AppError::InvalidParams(format!("bad training request: {e}")))?;
    if let Some(t) = req.threads {
        ferrolabel_models::device::set_threads(t);
    }
    struct Printer;
    impl ferrolabel_models::train::TrainObserver for Printer {
        fn event(&mut self, event: &TrainEvent) {
            let mut out = std::io::stdout().lock();
            let written = serde_json::to_writer(&mut out, event)
                .map_err(std::io::Error::from)
                .and_then(|_| out.write_all(b"\n"))
                .and_then(|_| out.flush());
            if written.is_err() {
                // the server that reads us is gone (killed): stop rather than keep
                // overwriting its checkpoints unwatched (events come after every step, and
                // never during a checkpoint write)
                std::process::exit(3);
            }
        }
        fn stop_requested(&self) -> bool {
            false
        }
    }
    let outcome = ferrolabel_models::train::train(&req.job, &mut Printer)?;
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &Finished { finished: outcome });
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    Ok(())
}

/// Starts `exe dev train-worker -` with piped stdio and writes `req` to its stdin.
///
/// The worker gets `SIGKILL` when the thread that started it ends (`PR_SET_PDEATHSIG`): the
/// caller ([`super::Trainer::run`]) blocks in that thread until the worker is reaped, so in
/// practice the worker dies with the server process, however the server ends. A worker whose
/// stdout breaks exits on its own too.
pub(super) fn spawn(exe: &Path, req: &WorkerRequest) -> Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("dev")
        .arg("train-worker")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        AppError::Task(format!(
            "cannot start the training worker {}: {e}",
            exe.display()
        ))
    })?;
    // the job goes in on stdin (no file to clean up); closing it starts the run
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&serde_json::to_vec(req).unwrap_or_default());
    }
    Ok(child)
}

/// Asks the kernel to `SIGKILL` the child when its parent thread ends.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: `pre_exec` runs the closure in the forked child before `exec`, where only
    // async-signal-safe calls are allowed: it calls `prctl` and `getppid` (both are) and
    // builds its errors from raw OS codes (no allocation, no lock). If the parent died
    // between `fork` and `prctl` no signal would ever come, hence the `getppid` check.
    unsafe {
        cmd.pre_exec(move || {
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

/// Whether `pid` is a live (not zombie) `train-worker` started from `exe`.
pub(super) fn is_our_worker(pid: u32, exe: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')'
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X" | "x")) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let argv0_is_exe = args.first() == Some(&exe.as_os_str().as_bytes());
    argv0_is_exe && args.get(1) == Some(&&b"dev"[..]) && args.get(2) == Some(&&b"train-worker"[..])
}

/// Kills a worker an earlier attempt left running (when `pid` still is one of ours) and waits
/// until it is gone, so that two workers never write the same checkpoint. Answers whether it
/// had to kill one.
pub(super) fn kill_stale(pid: u32, exe: &Path) -> Result<bool> {
    if !is_our_worker(pid, exe) {
        return Ok(false);
    }
    kill_pid(pid);
    let t0 = Instant::now();
    while is_our_worker(pid, exe) {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(AppError::Task(format!(
                "the earlier training worker (pid {pid}) does not die"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}

#[allow(unsafe_code)]
fn kill_pid(pid: u32) {
    // SAFETY: `kill` has no memory effects in this process; `pid` was checked to be one of
    // our workers just before (a pid recycled in between would need a whole pid-space wrap).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Removes the temp checkpoint file a killed worker may leave (`.<name>.<pid>.tmp`).
pub(super) fn remove_temp_files(dir: &Path, pid: u32) {
    let suffix = format!(".{pid}.tmp");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(&suffix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state letter of `pid` in /proc (`None`: gone).
    fn state(pid: u32) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        rest.split_whitespace().next().map(str::to_string)
    }

    #[test]
    fn a_worker_dies_with_the_thread_that_started_it() {
        let mut child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("600");
            die_with_parent(&mut cmd);
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap();
        // the thread has ended: the kernel kills the child (a zombie until reaped here)
        let t0 = Instant::now();
        while state(child.id()).is_some_and(|s| s != "Z") {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("the child outlived the thread that started it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn only_our_live_workers_are_ours() {
        let me = std::env::current_exe().unwrap();
        // this test process runs `me`, but not as `dev train-worker`
        assert!(!is_our_worker(std::process::id(), &me));
        let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
        assert!(!is_our_worker(sleeper.id(), Path::new("/bin/sleep")));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(!is_our_worker(sleeper.id(), &me));
        assert!(!kill_stale(sleeper.id(), &me).unwrap());
    }
}
