//! Following one `torchrun` run ([`super::run`]): the progress file the ranks append to (into
//! the task, `train_stats.json`, the curve and promoted checkpoints), torchrun's or sbatch's
//! output, the cancel flag (a stop kills the run's processes, or `scancel`s its Slurm job).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolabel_models::train::{TrainEvent, TrainOutcome};
use ferrolabel_models::Resolution;

use super::super::stats::Stats;
use super::super::torchrun_procs::{kill_marked, replace_atomically, scancel, signal};
use super::super::Trainer;
use crate::error::AppError;
use crate::jobs::JobHandle;

/// Follows one run: the progress file, torchrun's output, the cancel flag.
pub(super) struct Follow<'a> {
    pub trainer: &'a Trainer,
    pub handle: &'a JobHandle,
    pub stats: Stats,
    pub output: PathBuf,
    pub network: ferrolabel_models::network::SegResNetConfig,
    pub outcome: Option<TrainOutcome>,
    pub promoted: usize,
    /// Records each promoted checkpoint as a model version.
    pub promote: &'a dyn crate::versions::Promote,
    pub res: Resolution,
    /// Whether the run went to Slurm (`sbatch --wait`).
    pub slurm: bool,
    /// The Slurm job id (`sbatch --parsable` prints it first).
    pub slurm_job: Option<String>,
}

/// How long a stop waits for a cancelled Slurm job to leave the queue (Slurm's `KillWait`
/// defaults to 30 s).
pub(super) const SCANCEL_WAIT: Duration = Duration::from_secs(90);

/// A rank's first line.
#[derive(serde::Deserialize)]
struct RankLine {
    rank: usize,
    world_size: usize,
    pid: u32,
    host: String,
}

#[derive(serde::Deserialize)]
struct Finished {
    finished: TrainOutcome,
}

impl Follow<'_> {
    /// Tails `progress` until the child ends; kills the run once the job is cancelled.
    /// Answers the child's exit status and the tail of its stderr.
    pub fn follow(
        &mut self,
        mut child: Child,
        progress: &Path,
        marker: &str,
    ) -> (std::io::Result<std::process::ExitStatus>, String) {
        let tail = Arc::new(Mutex::new(Vec::<String>::new()));
        let slurm_job = Arc::new(Mutex::new(None::<String>));
        let mut readers = Vec::new();
        if let Some(err) = child.stderr.take() {
            let tail = tail.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                    tracing::info!(target: "torchrun", "{line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.push(line);
                    if t.len() > 8 {
                        t.remove(0);
                    }
                }
            }));
        }
        if let Some(out) = child.stdout.take() {
            let (tail, job) = (tail.clone(), slurm_job.clone());
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    tracing::info!(target: "torchrun", "{line}");
                    let mut j = job.lock().unwrap_or_else(|e| e.into_inner());
                    if j.is_none()
                        && line.split(';').next().is_some_and(|id| {
                            !id.is_empty() && id.chars().all(|c| c.is_ascii_digit())
                        })
                    {
                        *j = line.split(';').next().map(String::from);
                    }
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.push(line);
                    if t.len() > 8 {
                        t.remove(0);
                    }
                }
            }));
        }
        let cancel = self.handle.cancel_flag();
        let mut offset = 0u64;
        let mut partial = String::new();
        let mut killed = false;
        let status = loop {
            self.read_progress(progress, &mut offset, &mut partial);
            if self.slurm_job.is_none() {
                self.slurm_job = slurm_job.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(id) = &self.slurm_job {
                    self.handle.log(format!("Slurm job {id}"));
                }
            }
            if cancel.load(Ordering::SeqCst) && !killed {
                killed = true;
                if self.slurm {
                    // Slurm owns the processes (on other machines, in general)
                    let id = self.slurm_job.as_deref();
                    let done = scancel(id, marker, SCANCEL_WAIT);
                    signal(child.id(), true);
                    self.handle.log(match done {
                        Ok(t) => format!(
                            "stopped: scancel {}; the job left the queue after {t:.1?}",
                            id.unwrap_or(marker)
                        ),
                        Err(e) => format!("stopping: {e}"),
                    });
                } else {
                    signal(child.id(), true);
                    let n = kill_marked(marker, Duration::from_secs(30));
                    self.handle.log(format!(
                        "stopped: killed torchrun and {n} process(es) of the run"
                    ));
                }
            }
            match child.try_wait() {
                Ok(Some(s)) => break Ok(s),
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => break Err(e),
            }
        };
        // ranks that outlived the agent (they end on their own within a second)
        if !killed && !self.slurm {
            kill_marked(marker, Duration::from_secs(10));
        }
        for r in readers {
            let _ = r.join();
        }
        if !killed {
            self.read_progress(progress, &mut offset, &mut partial);
        }
        let tail = tail.lock().unwrap_or_else(|e| e.into_inner()).join(" | ");
        (status, tail)
    }

    /// Reads the complete lines appended to `path` since `offset`.
    fn read_progress(&mut self, path: &Path, offset: &mut u64, partial: &mut String) {
        let Ok(mut f) = std::fs::File::open(path) else {
            return;
        };
        let mut buf = String::new();
        if f.seek(SeekFrom::Start(*offset)).is_err() || f.read_to_string(&mut buf).is_err() {
            return;
        }
        *offset += buf.len() as u64;
        partial.push_str(&buf);
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            self.on_line(line.trim_end());
        }
    }

    fn on_line(&mut self, line: &str) {
        if line.is_empty() {
            return;
        }
        if let Ok(ev) = serde_json::from_str::<TrainEvent>(line) {
            self.on_event(&ev);
        } else if let Ok(f) = serde_json::from_str::<Finished>(line) {
            self.outcome = Some(f.finished);
        } else if let Ok(r) = serde_json::from_str::<RankLine>(line) {
            self.handle.log(format!(
                "rank {} of {} started (pid {} on {})",
                r.rank, r.world_size, r.pid, r.host
            ));
        } else {
            self.handle.log(line.to_string());
        }
    }

    fn on_event(&mut self, ev: &TrainEvent) {
        let (handle, stats) = (self.handle, &mut self.stats);
        if stats.on_progress(handle, ev, " per process") {
            return;
        }
        match ev {
            TrainEvent::Epoch(r) => {
                self.trainer.record_epoch(handle, stats, r);
            }
            TrainEvent::Checkpoint {
                epoch,
                metric,
                path,
            } => {
                let checked =
                    ferrolabel_models::network::weights::validate_file(&self.network, path)
                        .map_err(|e| AppError::BadWeights(e.to_string()))
                        .and_then(|_| replace_atomically(path, &self.output));
                match checked {
                    Ok(()) => {
                        self.promoted += 1;
                        self.promote.promoted(crate::versions::Promotion {
                            res: self.res,
                            path: self.output.clone(),
                            epoch: *epoch,
                            metric: *metric,
                            source: "torchrun",
                        });
                        handle.log(format!(
                            "epoch {epoch}: new best {} {metric:.4}, saved {}",
                            stats.metric_name,
                            self.output.display()
                        ));
                    }
                    Err(e) => handle.log(format!(
                        "epoch {epoch}: the bundle's checkpoint was not used: {e}"
                    )),
                }
            }
            _ => {}
        }
    }
}
