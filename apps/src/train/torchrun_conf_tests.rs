use super::*;
use crate::error::{AppError, Result};
use crate::train::options::{build_job, JobSource};
use crate::train::torchrun_cmd::*;
use crate::train::torchrun_launch::*;
use crate::train::torchrun_procs::MARKER_VAR;
use ferrolabel_models::train::Pair;
use ferrolabel_models::Bundle;
use std::collections::BTreeMap;

fn pairs(n: usize) -> Vec<Pair> {
    (0..n)
        .map(|i| Pair {
            id: format!("img{i}"),
            image: PathBuf::from(format!("/data/i{i}.nii.gz")),
            label: PathBuf::from(format!("/data/l{i}.nii.gz")),
        })
        .collect()
}

fn bundle() -> Bundle {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/wholebody/model/wholeBody_ct_segmentation"
    ));
    Bundle::open(&root).unwrap()
}

fn job(params: Value, n: usize) -> TrainJob {
    let b = bundle();
    let names = vec!["cpu".to_string()];
    let src = JobSource {
        bundle: &b,
        device_names: &names,
        default_device: "cpu",
    };
    build_job(&src, params.as_object().unwrap(), pairs(n))
        .unwrap()
        .0
}

fn launch_of(params: Value, job: &TrainJob, cuda: usize) -> Result<Launch> {
    launch(params.as_object().unwrap(), job, cuda, false)
}

#[test]
fn multi_gpu_is_opt_in() {
    let req = |v: Value| requested(v.as_object().unwrap());
    assert!(!req(json!({})).unwrap());
    assert!(!req(json!({"multi_gpu": false})).unwrap());
    assert!(req(json!({"multi_gpu": true})).unwrap());
    assert!(req(json!({"multi_gpu": "true"})).unwrap());
    assert!(req(json!({"multi_gpu": "maybe"})).is_err());
}

#[test]
fn cpu_and_gpu_launches() {
    let cpu = job(json!({}), 3);
    let l = launch_of(json!({"multi_gpu": true}), &cpu, 0).unwrap();
    assert_eq!((l.nproc_per_node, l.gpus.clone(), l.nodes), (2, None, 1));
    assert_eq!(l.world_size(), 2);
    let l = launch_of(json!({"nproc_per_node": "3", "num_workers": 0}), &cpu, 0).unwrap();
    assert_eq!((l.nproc_per_node, l.num_workers), (3, Some(0)));
    // MONAI Label's "all" on the CPU is no list; a list needs CUDA
    assert!(launch_of(json!({"gpus": "all"}), &cpu, 0).is_ok());
    assert!(launch_of(json!({"gpus": "0,1"}), &cpu, 0).is_err());

    let mut gpu = cpu.clone();
    gpu.device = "cuda:0".into();
    let l = launch_of(json!({"gpus": "all"}), &gpu, 4).unwrap();
    assert_eq!((l.nproc_per_node, l.gpus), (4, Some(vec![0, 1, 2, 3])));
    let l = launch_of(json!({"gpus": "1, 3"}), &gpu, 4).unwrap();
    assert_eq!((l.nproc_per_node, l.gpus), (2, Some(vec![1, 3])));
    let l = launch_of(json!({"gpus": [2]}), &gpu, 4).unwrap();
    assert_eq!(l.gpus, Some(vec![2]));
    for bad in [
        json!({"gpus": "0,0"}),
        json!({"gpus": "4"}),
        json!({"gpus": "x"}),
        json!({"gpus": []}),
        json!({"gpus": 3}),
    ] {
        let e = launch_of(bad.clone(), &gpu, 4).unwrap_err();
        assert!(matches!(e, AppError::InvalidParams(_)), "{bad}: {e:?}");
    }
    assert!(launch_of(json!({}), &gpu, 0).is_err());
}

#[test]
fn several_machines_need_a_rendezvous() {
    let j = job(json!({}), 2);
    let ok =
        json!({"nodes": 2, "node_rank": 1, "rdzv_endpoint": "node0:29500", "rdzv_id": "run-7"});
    let l = launch_of(ok, &j, 0).unwrap();
    assert_eq!(
        (
            l.nodes,
            l.node_rank,
            l.rdzv_endpoint.as_deref(),
            l.rdzv_id.as_str()
        ),
        (2, 1, Some("node0:29500"), "run-7")
    );
    assert_eq!(l.world_size(), 4);
    for bad in [
        json!({"nodes": 2}),
        json!({"nodes": 2, "node_rank": 2, "rdzv_endpoint": "h:1"}),
        json!({"nodes": 0}),
        json!({"rdzv_endpoint": "nohost"}),
        json!({"rdzv_endpoint": "h:port"}),
        json!({"rdzv_endpoint": "h :1"}),
        json!({"rdzv_id": "a b"}),
        json!({"nproc_per_node": 0}),
        json!({"num_workers": -1}),
    ] {
        let e = launch_of(bad.clone(), &j, 0).unwrap_err();
        assert!(matches!(e, AppError::InvalidParams(_)), "{bad}: {e:?}");
    }
    // Slurm finds the rendezvous itself
    assert!(launch(json!({"nodes": 2}).as_object().unwrap(), &j, 0, true).is_ok());
}

#[test]
fn the_override_carries_the_request_and_the_engines_network() {
    let j = job(
        json!({"highres": false, "max_epochs": 2, "val_interval": 2, "train_batch_size": 1,
               "init_LR": 0.01, "roi_size": 32, "val_roi_size": 48, "seed": 5, "val_split": 0.0}),
        1,
    );
    let l = launch_of(json!({"num_workers": 0}), &j, 0).unwrap();
    let files = RunFiles::new(Path::new("/runs/r1"), "model_lowres.pt");
    let o = override_json(&j, &l, &files);
    assert_eq!(o["train#trainer#max_epochs"], 2);
    assert_eq!(o["val_interval"], 2);
    assert_eq!(o["batch_size"], 1);
    assert_eq!(o["displayable_configs#init_LR"], 0.01);
    assert_eq!(o["displayable_configs#highres"], false);
    assert_eq!(o["train#random_transforms#0#roi_size"], json!([32, 32, 32]));
    assert_eq!(o["validate#inferer#roi_size"], json!([32, 32, 32]));
    assert_eq!(
        o["validate#preprocessing#transforms#9#roi_size"],
        json!([48, 48, 48])
    );
    assert_eq!(o["ckpt_dir"], "/runs/r1/models");
    assert_eq!(o["train#trainer#amp"], false);
    assert_eq!(o["train#dataloader#num_workers"], 0);
    // the network the engine serves, so that the checkpoint loads strictly
    assert_eq!(o["network_def"]["init_filters"], j.network.init_filters);
    assert_eq!(o["network_def"]["out_channels"], 105);
    // CPU: gloo, no CUDA device
    assert_eq!(o["device"], "$torch.device('cpu')");
    assert_eq!(o["network#device_ids"], Value::Null);
    let init = o["initialize"].to_string();
    assert!(
        init.contains("backend='gloo'") && !init.contains("cuda"),
        "{init}"
    );
    assert!(init.contains("set_determinism(seed=5)"));
    assert!(init.contains(r#"ferrolabel_torchrun.start(\"/runs/r1/progress.jsonl\")"#));
    // one pair on two ranks: validation pads instead of leaving a rank without data
    assert_eq!(o["validate#sampler#even_divisible"], true);
    let handlers = o["train#handlers"].as_array().unwrap();
    assert_eq!(handlers.len(), 4);
    assert_eq!(handlers[3]["_target_"], "ferrolabel_torchrun.Progress");
    assert_eq!(handlers[3]["checkpoint"], "/runs/r1/models/model_lowres.pt");
    assert_eq!(o["network#module"], "$@network_def.to(@device)");
    // no held-out pair: the training pairs validate
    let d = datalist(&j);
    assert_eq!(d["training"], d["validation"]);
    assert_eq!(d["training"][0]["label"], "/data/l0.nii.gz");

    // GPU: NCCL, the bundle's device and DDP settings kept; pretrained weights are loaded
    let mut g = job(json!({"val_split": 0.5}), 4);
    g.device = "cuda:0".into();
    g.init_weights = Some(PathBuf::from("/b/models/model.pt"));
    let l = launch_of(json!({"gpus": "0,1"}), &g, 2).unwrap();
    let o = override_json(&g, &l, &RunFiles::new(Path::new("/r"), "model.pt"));
    let init = o["initialize"].to_string();
    assert!(
        init.contains("backend='nccl'") && init.contains("set_device"),
        "{init}"
    );
    assert!(o.get("device").is_none() && o.get("network#device_ids").is_none());
    assert_eq!(o["displayable_configs#highres"], true);
    assert_eq!(o["train#trainer#amp"], true);
    assert!(o.get("validate#sampler#even_divisible").is_none());
    assert_eq!(
        o["network#module"],
        r#"$ferrolabel_torchrun.load_weights(@network_def, "/b/models/model.pt").to(@device)"#
    );
    let d = datalist(&g);
    assert_eq!(d["training"].as_array().unwrap().len(), 2);
    assert_eq!(d["validation"].as_array().unwrap().len(), 2);
}

#[test]
fn command_lines() {
    let j = job(json!({}), 2);
    let one = launch_of(json!({"nproc_per_node": 2}), &j, 0).unwrap();
    assert_eq!(
        torchrun_args(&one),
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            "--nproc_per_node=2"
        ]
    );
    let two = launch_of(
        json!({"nodes": 2, "node_rank": 1, "rdzv_endpoint": "n0:29400", "nproc_per_node": 1}),
        &j,
        0,
    )
    .unwrap();
    assert_eq!(
        torchrun_args(&two),
        [
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--node_rank=1",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=n0:29400",
            "--rdzv-id=ferrolabel",
            "--nproc_per_node=1"
        ]
    );
    let configs = config_files(Path::new("/b"), Path::new("/r/override.json"));
    let args = bundle_args(&configs, Path::new("/b/configs/metadata.json"));
    assert_eq!(args[..3], ["-m", "monai.bundle", "run"]);
    assert_eq!(
        args[4],
        r#"["/b/configs/train.json","/b/configs/multi_gpu_train.json","/r/override.json"]"#
    );
}

#[test]
fn the_slurm_script() {
    let mut j = job(json!({}), 2);
    j.device = "cuda:0".into();
    let l = launch(
        json!({"nodes": 2, "gpus": "0,1"}).as_object().unwrap(),
        &j,
        2,
        true,
    )
    .unwrap();
    let slurm = Slurm {
        sbatch_args: vec![],
        rdzv_port: 29511,
    };
    let env = vec![(MARKER_VAR.to_string(), "ferrolabel-t1".to_string())];
    let args = vec!["-m".to_string(), "it's".to_string()];
    let s = sbatch_script(
        Path::new("/v/bin/python"),
        &l,
        &slurm,
        &env,
        &args,
        Path::new("/runs/r1"),
        "ferrolabel-t1",
    );
    assert!(s.starts_with("#!/bin/bash\n"));
    for line in [
        "#SBATCH --job-name=ferrolabel-t1\n",
        "#SBATCH --nodes=2\n",
        "#SBATCH --ntasks-per-node=1\n",
        "#SBATCH --gpus-per-node=2\n",
        "#SBATCH --output=/runs/r1/slurm-%j.out\n",
        "export FERROLABEL_TORCHRUN_RUN='ferrolabel-t1'\n",
    ] {
        assert!(s.contains(line), "{line:?} not in\n{s}");
    }
    assert!(s.contains(
        "srun --kill-on-bad-exit=1 '/v/bin/python' -m torch.distributed.run --nnodes=\"$SLURM_NNODES\" \
         --nproc_per_node=2 --rdzv-backend=c10d --rdzv-endpoint=\"$head:29511\" \
         --rdzv-id=\"$SLURM_JOB_ID\" '-m' 'it'\\''s'\n"
    ), "{s}");
    // the script is valid bash
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sh");
    std::fs::write(&path, &s).unwrap();
    let st = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn settings_from_conf() {
    let mut conf = BTreeMap::new();
    conf.insert("python".to_string(), "/opt/py/bin/python".to_string());
    let s = TorchrunSettings::from_conf(&conf, Path::new("/nowhere"));
    assert_eq!(s.python, PathBuf::from("/opt/py/bin/python"));
    assert!(s.slurm.is_none());
    conf.insert("slurm".into(), "true".into());
    conf.insert(
        "sbatch_args".into(),
        "--partition gpu  --time 1:00:00".into(),
    );
    let s = TorchrunSettings::from_conf(&conf, Path::new("/nowhere"));
    assert_eq!(
        s.slurm,
        Some(Slurm {
            sbatch_args: vec![
                "--partition".into(),
                "gpu".into(),
                "--time".into(),
                "1:00:00".into()
            ],
            rdzv_port: 29500
        })
    );
}
