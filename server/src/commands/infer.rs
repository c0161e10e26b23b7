//! `ferrolabel infer`: one-shot segmentation of a NIfTI file with a MONAI bundle.

use anyhow::{bail, Context, Result};
use ferrolabel_imaging::{read_nifti, write_label_nifti, Limits};
use ferrolabel_models::bundle::{Bundle, Resolution};
use ferrolabel_models::engine::{Engine, EngineOptions, InferRequest, Priority};
use ferrolabel_models::Precision;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `ferrolabel infer`.
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// MONAI bundle folder (configs/metadata.json, configs/inference.json, models/*.pt).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Input image (.nii or .nii.gz).
    #[arg(long)]
    pub image: PathBuf,
    /// Output label map (.nii.gz, .nii or .nrrd), uint8 on the input's grid.
    #[arg(long)]
    pub output: PathBuf,
    /// true: 1.5 mm and models/model.pt; false: 3.0 mm and models/model_lowres.pt.
    #[arg(long, action = clap::ArgAction::Set)]
    pub highres: Option<bool>,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Sliding-window overlap (default: the bundle's, 0.25).
    #[arg(long)]
    pub sw_overlap: Option<f64>,
    /// Windows per network call (default: the bundle's, 1).
    #[arg(long)]
    pub sw_batch_size: Option<usize>,
    /// Network precision: fp32 (exact) or bf16 (opt-in, faster; needs a CPU with
    /// AVX512-BF16 or AMX, else an error).
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub precision: Precision,
    /// Print the timings as JSON on stdout instead of text on stderr.
    #[arg(long)]
    pub json: bool,
}

/// clap's parser of `--precision`.
fn parse_precision(s: &str) -> std::result::Result<Precision, String> {
    Precision::parse(s).map_err(|e| e.to_string())
}

/// Peak resident memory of this process in bytes (VmHWM), if the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs `ferrolabel infer`.
pub fn run(args: InferArgs) -> Result<()> {
    let t0 = Instant::now();
    let device = ferrolabel_models::parse_device(&args.device)?;
    ferrolabel_models::device::check_precision(args.precision, device)?;
    let bundle =
        Bundle::open(&args.bundle).with_context(|| format!("bundle {}", args.bundle.display()))?;
    let res = Resolution::from_highres(args.highres.unwrap_or(bundle.default_highres));
    if !bundle.has_weights(res) {
        bail!(
            "no weights at {} (install the bundle's {} there)",
            bundle.weights_path(res).display(),
            res.model_file()
        );
    }
    let labels_count = bundle.labels.len();
    let engine = Engine::start(
        bundle,
        EngineOptions {
            device,
            threads: args.threads,
            amp: device.is_cuda(),
            precision: args.precision,
            queue_limit: 1,
        },
    )?;
    engine.preload_blocking(res)?;
    let vol = read_nifti(&args.image, &Limits::default())
        .with_context(|| format!("cannot read {}", args.image.display()))?;
    let t_load = t0.elapsed().as_secs_f64();
    // only the grid is kept here: the engine frees the voxels once it has preprocessed them
    let (dims, affine, header) = (vol.dims, vol.affine, vol.header.clone());
    let req = InferRequest {
        volume: Arc::new(vol),
        resolution: res,
        sw_overlap: args.sw_overlap,
        sw_batch_size: args.sw_batch_size,
        precision: None,
        priority: Priority::Interactive,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let seg = engine.infer_blocking(req)?;
    let t_write0 = Instant::now();
    if labels_count > 256 {
        bail!("{labels_count} classes do not fit in a uint8 label map");
    }
    let name = args.output.to_string_lossy();
    if name.ends_with(".nrrd") {
        let bytes = ferrolabel_imaging::encode_label_nrrd(&seg.labels, dims, &affine, true)?;
        std::fs::write(&args.output, bytes)?;
    } else {
        let header = header
            .as_ref()
            .context("the input has no NIfTI header to copy the grid from")?;
        write_label_nifti(&args.output, &seg.labels, header)
            .with_context(|| format!("cannot write {}", args.output.display()))?;
    }
    let t_write = t_write0.elapsed().as_secs_f64();
    let total = t0.elapsed().as_secs_f64();
    let peak = peak_rss_bytes().unwrap_or(0);
    let report = serde_json::json!({
        "image": args.image.display().to_string(),
        "output": args.output.display().to_string(),
        "highres": res.is_high(),
        "device": args.device,
        "precision": args.precision.as_str(),
        "network_shape": seg.network_shape,
        "windows": seg.windows,
        "seconds": {"load": t_load, "preprocess": seg.times.pre, "network": seg.times.infer,
                    "postprocess": seg.times.invert, "write": t_write, "total": total},
        "peak_rss_bytes": peak,
    });
    if args.json {
        println!("{report}");
    } else {
        eprintln!(
            "load {:.2}s | preprocess {:.2}s | network {:.2}s ({} windows on {:?}) | postprocess {:.2}s | write {:.2}s | total {:.2}s | peak RSS {:.0} MiB",
            t_load,
            seg.times.pre,
            seg.times.infer,
            seg.windows,
            seg.network_shape,
            seg.times.invert,
            t_write,
            total,
            peak as f64 / (1024.0 * 1024.0)
        );
    }
    engine.shutdown();
    Ok(())
}
