//! A throwaway single-node Slurm cluster from Debian's `slurm-wlm` and `munge` packages: a
//! fresh munge key and `munged` on a socket in a temporary folder, a generated `slurm.conf`
//! (one node `localhost` on 127.0.0.1 with 2 CPUs, one partition [`SLURM_PARTITION`], free
//! ports, state, spool and logs in the folder, no cgroups: `proctrack/linuxproc`, `task/none`,
//! no accounting), `slurmctld -D` and `slurmd -D` as children. Jobs run as the user of the test
//! (root in CI: slurmd then runs them as their submitter, as on a real cluster).
//!
//! A small `sh` supervisor owns the daemons, as in [`crate::Postgres`]: it starts them, then
//! blocks reading its stdin, a pipe whose only writer is the test process. When the test process
//! drops the [`Slurm`] or exits (even SIGKILLed), the pipe closes and the supervisor cancels
//! every job of the partition, waits for the queue to empty, stops slurmd, slurmctld and munged
//! (SIGTERM, SIGKILL after 10 s) and removes the folder.

use crate::procs::alive;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::free_port;

/// The partition of the test clusters (the default one; `sbatch --partition ferrolabel`).
pub const SLURM_PARTITION: &str = "ferrolabel";

/// The supervisor: `$1` the cluster folder, `$2..$7` munged, slurmctld, slurmd, scancel, squeue
/// (absolute paths). Prints the daemons' pids, waits for EOF on stdin, then tears down.
const SUPERVISOR: &str = r#"
dir=$1; munged=$2; slurmctld=$3; slurmd=$4; scancel=$5; squeue=$6
export SLURM_CONF="$dir/slurm.conf"
"$munged" -F --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" \
  --log-file="$dir/log/munged.log" --pid-file="$dir/munge/munged.pid" \
  --seed-file="$dir/munge/munged.seed" >>"$dir/log/munged.out" 2>&1 &
m=$!
i=0
while [ ! -S "$dir/munge/munge.sock" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
"$slurmctld" -D -f "$SLURM_CONF" >>"$dir/log/slurmctld.out" 2>&1 &
c=$!
"$slurmd" -D -N localhost -f "$SLURM_CONF" >>"$dir/log/slurmd.out" 2>&1 &
d=$!
trap '' INT TERM HUP
echo "$m $c $d"
read -r _ || true
"$scancel" --partition=ferrolabel >/dev/null 2>&1
i=0
while [ "$i" -lt 150 ] && [ -n "$("$squeue" -h -o %i 2>/dev/null)" ]; do sleep 0.1; i=$((i+1)); done
stop() {
  kill -TERM "$@" 2>/dev/null
  i=0
  for p in "$@"; do
    while [ "$i" -lt 100 ] && [ -e "/proc/$p" ] && ! grep -q ') Z' "/proc/$p/stat" 2>/dev/null; do
      sleep 0.1; i=$((i+1))
    done
  done
  kill -KILL "$@" 2>/dev/null
  wait "$@"
}
stop "$d" "$c"
stop "$m"
rm -rf "$dir"
"#;

/// `name` found in `$PATH`, `/usr/sbin` or `/usr/bin`.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The absolute path of a Slurm or munge program; panics naming the packages when it is
/// missing (the tests that need Slurm never skip).
pub fn slurm_program(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|| {
        panic!(
            "{name} not found (in $PATH, /usr/sbin, /usr/bin): install Debian's `slurm-wlm` and \
             `munge` packages (apt-get install slurm-wlm munge; scripts/setup-system.sh does)"
        )
    })
}

fn output(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The `slurm.conf` of a cluster in `dir`.
fn config(dir: &Path, user: &str, host: &str, ctld_port: u16, slurmd_port: u16) -> String {
    let d = dir.display();
    format!(
        "ClusterName=ferrolabel\n\
         SlurmctldHost={host}(127.0.0.1)\n\
         SlurmctldPort={ctld_port}\n\
         SlurmdPort={slurmd_port}\n\
         SlurmUser={user}\n\
         SlurmdUser={user}\n\
         AuthType=auth/munge\n\
         AuthInfo=socket={d}/munge/munge.sock\n\
         CredType=cred/munge\n\
         StateSaveLocation={d}/state\n\
         SlurmdSpoolDir={d}/spool\n\
         SlurmctldPidFile={d}/slurmctld.pid\n\
         SlurmdPidFile={d}/slurmd.pid\n\
         SlurmctldLogFile={d}/log/slurmctld.log\n\
         SlurmdLogFile={d}/log/slurmd.log\n\
         ProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\n\
         JobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\n\
         JobCompType=jobcomp/none\n\
         MpiDefault=none\n\
         SchedulerType=sched/builtin\n\
         SelectType=select/cons_tres\n\
         SelectTypeParameters=CR_CPU\n\
         SlurmdParameters=config_overrides\n\
         ReturnToService=2\n\
         MinJobAge=4\n\
         KillWait=5\n\
         NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\n\
         PartitionName={SLURM_PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
    )
}

/// A running single-node Slurm cluster; torn down on drop (or at process exit).
pub struct Slurm {
    supervisor: Mutex<Option<Child>>,
    /// munged, slurmctld, slurmd.
    pids: [u32; 3],
    dir: PathBuf,
    /// slurmctld's port on 127.0.0.1.
    pub ctld_port: u16,
}

impl Slurm {
    /// Writes the munge key and `slurm.conf` into a new temporary folder, starts munged,
    /// slurmctld and slurmd, and waits until the node is idle. Panics (with the logs) when the
    /// packages are missing or the cluster does not come up within 60 s.
    pub fn start() -> Slurm {
        let programs = ["munged", "slurmctld", "slurmd", "scancel", "squeue"].map(slurm_program);
        for client in ["sbatch", "srun", "sinfo", "scontrol"] {
            slurm_program(client);
        }
        let dir = tempfile::Builder::new()
            .prefix("ferrolabel-slurm-")
            .tempdir()
            .unwrap()
            .keep();
        // munged wants every folder above its socket searchable by all
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["munge", "log", "state", "spool"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }
        let mut key = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .unwrap();
        let key_path = dir.join("munge/munge.key");
        std::fs::write(&key_path, &key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let user = output(Command::new("id").arg("-un"));
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let (ctld_port, slurmd_port) = (free_port(), free_port());
        std::fs::write(
            dir.join("slurm.conf"),
            config(&dir, &user, &host, ctld_port, slurmd_port),
        )
        .unwrap();
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg(&dir)
            .args(&programs)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // its own process group: a Ctrl-C of the test run reaches the test process, whose
            // exit then tears the cluster down in order
            .process_group(0)
            .spawn()
            .expect("starting the Slurm supervisor (sh)");
        let mut line = String::new();
        BufReader::new(supervisor.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pids: Vec<u32> = line
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        let pids: [u32; 3] = pids
            .try_into()
            .unwrap_or_else(|_| panic!("the supervisor's pids: {line:?}"));
        let slurm = Slurm {
            supervisor: Mutex::new(Some(supervisor)),
            pids,
            dir,
            ctld_port,
        };
        slurm.wait_ready();
        slurm
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            for (pid, name) in self.pids.iter().zip(["munged", "slurmctld", "slurmd"]) {
                assert!(alive(*pid), "{name} exited at start:\n{}", self.log());
            }
            let state = output(self.command("sinfo").args(["-h", "-o", "%T"]));
            if state == "idle" {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the Slurm node is not idle within 60 s (sinfo: {state:?}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The cluster folder (`slurm.conf`, `munge/`, `log/`, `state/`, `spool/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generated `slurm.conf` (what `SLURM_CONF` must name for the client commands).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    /// The environment a process needs to use this cluster with Slurm's client commands:
    /// `SLURM_CONF`, and `PATH` with the folder of `sbatch` first.
    pub fn env(&self) -> Vec<(String, String)> {
        let bin = slurm_program("sbatch");
        let mut path = vec![bin.parent().unwrap().to_path_buf()];
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        vec![
            ("SLURM_CONF".into(), self.conf().display().to_string()),
            (
                "PATH".into(),
                std::env::join_paths(path)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
        ]
    }

    /// A Slurm client command (`sbatch`, `squeue`, `scancel`, ...) set up for this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(slurm_program(program));
        c.env("SLURM_CONF", self.conf()).stdin(Stdio::null());
        c
    }

    /// The ids of the jobs in the queue (any state, completing ones included).
    pub fn queue(&self) -> Vec<String> {
        output(self.command("squeue").args(["-h", "-o", "%i"]))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The names of the jobs in the queue.
    pub fn queue_names(&self) -> Vec<String> {
        output(self.command("squeue").args(["-h", "-o", "%j"]))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The daemons' logs so far (for failure messages).
    pub fn log(&self) -> String {
        [
            "munged.out",
            "slurmctld.log",
            "slurmd.log",
            "slurmctld.out",
            "slurmd.out",
        ]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(self.dir.join("log").join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            format!(
                "== {f}\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        if let Some(mut s) = self.supervisor.get_mut().unwrap().take() {
            // closing its stdin tells the supervisor to cancel the jobs, stop the daemons and
            // remove the folder
            drop(s.stdin.take());
            let _ = s.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < limit, "{what} within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn runs_a_batch_job_cancels_one_and_cleans_up() {
        let slurm = Slurm::start();
        let dir = slurm.dir().to_path_buf();
        let work = tempfile::tempdir().unwrap();
        // a job that runs a step with srun and sees the submitter's environment
        let script = work.path().join("job.sh");
        std::fs::write(
            &script,
            "#!/bin/bash\nsrun bash -c 'echo \"step $SLURM_PROCID on $SLURMD_NODENAME: $FL_MARK\"'\n",
        )
        .unwrap();
        let out = slurm
            .command("sbatch")
            .args(["--wait", "--parsable", "--partition", SLURM_PARTITION])
            .arg(format!("--output={}/out-%j.txt", work.path().display()))
            .arg(&script)
            .env("FL_MARK", "marked")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            slurm.log()
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let text = std::fs::read_to_string(work.path().join(format!("out-{id}.txt"))).unwrap();
        assert_eq!(text.trim(), "step 0 on localhost: marked");

        // a long job leaves the queue and its processes end once cancelled by name
        std::fs::write(&script, "#!/bin/bash\nsrun sleep 600\n").unwrap();
        let mark = format!("long-{}", std::process::id());
        let out = slurm
            .command("sbatch")
            .args(["--parsable", "--job-name=fl-long", "--output=/dev/null"])
            .arg(&script)
            .env("FL_MARK", &mark)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kv = format!("FL_MARK={mark}");
        wait("the job's sleep to start", Duration::from_secs(30), || {
            crate::procs::processes_with_env(&kv).len() >= 2
        });
        assert_eq!(slurm.queue_names(), ["fl-long"]);
        let st = slurm
            .command("scancel")
            .arg("--name=fl-long")
            .status()
            .unwrap();
        assert!(st.success());
        wait("the queue to empty", Duration::from_secs(30), || {
            slurm.queue().is_empty()
        });
        wait(
            "the job's processes to end",
            Duration::from_secs(30),
            || crate::procs::processes_with_env(&kv).is_empty(),
        );
        let port = slurm.ctld_port;
        drop(slurm);
        assert!(!dir.exists(), "cluster folder left behind");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
