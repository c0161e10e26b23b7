//! Distributed training handed to a real Slurm (`--conf slurm true`): a throwaway single-node
//! cluster (`testkit::Slurm`: munged, slurmctld and slurmd from Debian's packages, on loopback)
//! runs the batch script the server submits with `sbatch --wait` (srun, then torchrun with a c10d
//! rendezvous, two gloo processes on the CPU), driven by the official `monailabel` client as in
//! `torchrun.rs`: DONE, the ranks ran inside the Slurm job, the checkpoint is the active
//! `torchrun` version and the Rust engine serves the client's next infer with it. Then a stop
//! during a run: the server's scancel reaches the controller (its log holds the kill request), the
//! job leaves the queue and no process of the run is left.

use std::time::{Duration, Instant};

use ferrolabel_testkit::{free_port, Slurm, SLURM_PARTITION};
use serde_json::json;

use crate::common;
use crate::common::spawned::Server;
use crate::common::training::{cli_infer_lowres, mapped_label, python, wait_until};
use crate::common::Opts;
use crate::torchrun::{alive, client, client_infer, details, leftovers, processes_of, MODEL};

/// Whether process `pid`'s environment holds `kv` (`NAME=value`).
fn has_env(pid: u32, kv: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == kv.as_bytes()))
}

#[test]
fn torchrun_through_slurm_and_a_stop_scancels_the_job() {
    let t_start = Instant::now();
    let slurm = Slurm::start();
    eprintln!("the Slurm cluster was up after {:?}", t_start.elapsed());
    let bundle = common::bundle_copy();
    let s = Server::start(Opts {
        bundle: bundle.path().to_path_buf(),
        args: [
            "--conf",
            "python",
            &python().to_string_lossy(),
            "--conf",
            "slurm",
            "true",
            "--conf",
            "sbatch_args",
            // a value starting with "--" (start_server's --conf allows it)
            &format!("--partition {SLURM_PARTITION} --time 30"),
            "--conf",
            "slurm_rdzv_port",
            &free_port().to_string(),
        ]
        .map(String::from)
        .to_vec(),
        env: slurm.env(),
        ..Opts::new()
    });
    let tmp = tempfile::tempdir().unwrap();
    s.save_final("example_ct", mapped_label(tmp.path()));
    let before = client_infer(&s, tmp.path());
    let weights_path = bundle.path().join("models/model_lowres.pt");
    let weights_before = std::fs::read(&weights_path).unwrap();

    let params = json!({
        "multi_gpu": true, "gpus": "all", "device": "cpu", "nproc_per_node": 2,
        "num_workers": 0, "highres": false, "max_epochs": 2, "val_interval": 2,
        "train_batch_size": 1, "roi_size": 32, "val_roi_size": 32, "init_LR": 0.01
    });
    let last = client(&s, &["train", &params.to_string()]);
    eprintln!(
        "2 epochs on 2 gloo processes under Slurm took {}",
        last["seconds"]
    );
    let lines = details(&last);
    assert_eq!(
        last["status"],
        "DONE",
        "{last}\n{}\n{}",
        s.stderr(),
        slurm.log()
    );
    assert_eq!(last["result"]["processes"], 2);
    assert_eq!(last["result"]["checkpoints_promoted"], 1);
    for want in [
        "through sbatch --wait",
        "Slurm job ",
        "rank 0 of 2 started",
        "rank 1 of 2 started",
        "epoch 2/2: loss",
        "new best train_mean_dice",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "{want:?} not in {lines:?}"
        );
    }
    assert!(slurm.queue().is_empty(), "{:?}", slurm.queue());

    // the checkpoint is the active `torchrun` version and the engine serves it
    let weights_after = std::fs::read(&weights_path).unwrap();
    assert!(
        weights_before != weights_after,
        "the weights were not replaced"
    );
    let (_, v) = s.get_json(&format!("/model/versions/{MODEL}?highres=false"));
    assert_eq!(v["active"], v["versions"][0]["version"], "{v}");
    assert_eq!(v["versions"][0]["source"], "torchrun", "{v}");
    assert_eq!(v["versions"][0]["job_id"], last["id"], "{v}");
    let after = client_infer(&s, tmp.path());
    assert_ne!(before, after, "infer still uses the old weights");
    assert_eq!(after, cli_infer_lowres(bundle.path(), tmp.path()));
    assert_eq!(leftovers(bundle.path()), Vec::<String>::new());

    // a stop during a run: scancel, the job leaves the queue, no process of the run is left
    let params = json!({
        "multi_gpu": true, "gpus": "all", "device": "cpu", "nproc_per_node": 2,
        "num_workers": 1, "highres": false, "max_epochs": 100000, "val_interval": 100000,
        "train_batch_size": 1, "roi_size": 32
    });
    let task = client(&s, &["start", &params.to_string()]);
    let marker = format!("ferrolabel-{}", task["id"].as_str().unwrap());
    s.wait_train_steps(1, Duration::from_secs(300));
    assert_eq!(slurm.queue_names(), [marker.as_str()]);
    let job = slurm.queue()[0].clone();
    let running = processes_of(&marker);
    // the batch script, srun, the agent and two ranks at least, all inside the Slurm job
    assert!(running.len() >= 6, "{running:?}");
    let in_job: Vec<u32> = running
        .iter()
        .copied()
        .filter(|p| has_env(*p, &format!("SLURM_JOB_ID={job}")))
        .collect();
    // all but `sbatch --wait` itself (the server's child)
    assert_eq!(
        in_job.len() + 1,
        running.len(),
        "processes of the run outside Slurm job {job}: {running:?} {in_job:?}"
    );
    let stopped = client(&s, &["stop"]);
    assert_eq!(stopped["status"], "STOPPED", "{stopped}");
    let took = wait_until(
        "the job to leave the queue and every process of the run to end",
        Duration::from_secs(60),
        || {
            slurm.queue().is_empty()
                && running.iter().all(|p| !alive(*p))
                && processes_of(&marker).is_empty()
        },
    );
    eprintln!("{} processes ended {took:?} after the stop", running.len());
    // and it was the scancel that ended it (Slurm's controller logs the kill request); without
    // the scancel the job also ends, but on its own: its run folder is removed under it
    let log = slurm.log();
    assert!(
        log.lines().any(|l| l.contains("REQUEST_KILL_JOB")
            && l.split_whitespace().any(|w| w == format!("JobId={job}"))),
        "no kill request for Slurm job {job} in the controller's log:\n{log}"
    );
    wait_until("the task to let go", Duration::from_secs(60), || {
        s.get_json("/train/?check_if_running=true").0 == 404
    });
    wait_until("the run folder to go", Duration::from_secs(30), || {
        leftovers(bundle.path()).is_empty()
    });
    assert!(
        std::fs::read(&weights_path).unwrap() == weights_after,
        "the stopped run changed the weights file"
    );
    eprintln!("slurm test took {:?}", t_start.elapsed());
}
