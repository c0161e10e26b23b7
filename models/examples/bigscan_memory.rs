//! Peak RSS of each stage of the highres pipeline on a big scan, in seconds instead of minutes:
//! the network (random weights, the bundle's architecture) runs only on the windows named by
//! `--real A-B` (and the first); every other window gets fresh zeros shaped and laid out like
//! the first real output, which cost the accumulator and the blending what a real output does.
//!
//! ```text
//! cargo run --release -p ferrolabel-models --example bigscan_memory -- \
//!     target/bigscan/ct_512x512x400.nii.gz bench-out/bundle_random 1.5 [--real 44-47]
//! ```
//!
//! Prints one JSON line: per stage the highest RSS sampled (every 10 ms) and, at the end, VmHWM.

use ferrolabel_imaging::{read_nifti, Limits};
use ferrolabel_models::inferer::{predict_labels_timed, SlidingWindow};
use ferrolabel_models::network::SegResNet;
use ferrolabel_models::pipeline::{invert_labels, labels_to_vec, preprocess};
use ferrolabel_models::{Bundle, Precision};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tch::{nn, Tensor};

fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let image = &args[1];
    let bundle = Bundle::open(args[2].as_ref())?;
    let mm: f64 = args[3].parse()?;
    let real = match args.iter().position(|a| a == "--real") {
        Some(i) => {
            let (a, b) = args[i + 1].split_once('-').unwrap_or(("0", "0"));
            a.parse::<usize>()?..=b.parse::<usize>()?
        }
        None => 0..=0,
    };
    tch::set_num_threads(2);
    let stage = Arc::new(Mutex::new(String::from("start")));
    let peaks = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stage, peaks, stop) = (stage.clone(), peaks.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let rss = status_kb("VmRSS:") * 1024;
                let name = stage.lock().unwrap().clone();
                let mut p = peaks.lock().unwrap();
                match p.last_mut() {
                    Some((n, v)) if *n == name => *v = (*v).max(rss),
                    _ => p.push((name, rss)),
                }
                drop(p);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
    };
    // the engine runs jobs on a thread of its own: so does this
    let image = image.clone();
    let stage2 = stage.clone();
    let windows = std::thread::spawn(move || -> anyhow::Result<usize> {
        let set = |s: &str| *stage2.lock().unwrap() = s.to_string();
        set("load");
        let vol = read_nifti(image.as_ref(), &Limits::default())?;
        set("network_load");
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = SegResNet::new(&vs.root(), &bundle.network);
        net.set_inference(Some(Precision::Fp32));
        set("preprocess");
        let prepared = preprocess(&vol, [mm; 3])?;
        // as the engine does (pipeline::segment_shared): the voxels go once preprocessed
        drop(vol);
        let input = prepared.image.unsqueeze(0);
        set("sliding");
        // (shape, channels-last) of the first real output: the stand-ins are zeros like it
        let mut like: Option<(Vec<i64>, bool)> = None;
        let mut n = 0usize;
        let (labels, _) = tch::no_grad(|| {
            predict_labels_timed(
                &input,
                &SlidingWindow::bundle_default(),
                net.config().out_channels,
                |x| {
                    let i = n;
                    n += x.size()[0] as usize;
                    match &like {
                        Some((shape, cl)) if !real.contains(&i) => {
                            let opts = (tch::Kind::Float, tch::Device::Cpu);
                            Ok(if *cl {
                                let s = [shape[0], shape[2], shape[3], shape[4], shape[1]];
                                Tensor::zeros(s, opts).permute([0, 4, 1, 2, 3])
                            } else {
                                Tensor::zeros(shape.as_slice(), opts)
                            })
                        }
                        _ => {
                            set("sliding_real_window");
                            let y = net.forward_t(x, false);
                            set("sliding");
                            let st = y.stride();
                            like.get_or_insert((y.size(), st[1] == 1));
                            Ok(y)
                        }
                    }
                },
                &mut |_, _| true,
            )
        })?;
        drop(input);
        set("invert");
        let back = invert_labels(&labels, &prepared)?;
        let out = labels_to_vec(&back)?;
        set("done");
        std::hint::black_box(out);
        Ok(n)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
    std::thread::sleep(std::time::Duration::from_millis(30));
    stop.store(true, Ordering::SeqCst);
    sampler.join().ok();
    let gib = |b: u64| (b as f64 / (1u64 << 30) as f64 * 1000.0).round() / 1000.0;
    let stages: Vec<serde_json::Value> = peaks
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| serde_json::json!({"stage": n, "peak_rss_gib": gib(*v)}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"windows": windows, "stages": stages,
                           "vm_hwm_gib": gib(status_kb("VmHWM:") * 1024)})
    );
    Ok(())
}
