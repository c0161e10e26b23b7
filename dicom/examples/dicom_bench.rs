//! The Rust side of `bench/bench_dicom.py`: times one operation and prints one JSON line with
//! the wall time and the process's peak RSS (`VmHWM` from `/proc/self/status`).
//!
//! ```text
//! dicom_bench assemble SERIES_DIR
//!     {"seconds", "vm_hwm_bytes", "dims", "sum"}: assemble_dir on the folder
//! dicom_bench seg SERIES_DIR LABELS_U8 NAMES_JSON OUT_DIR
//!     the series assembled (not timed), then the SEG of the label map (raw u8, x fastest, on
//!     the series' grid; NAMES_JSON a list of structure names for values 1..=n) written:
//!     {"binary": {"seconds", "bytes"}, "labelmap": {"seconds", "bytes"}} (the files saved as
//!     OUT_DIR/binary.dcm and OUT_DIR/labelmap.dcm)
//! ```

use std::path::Path;
use std::time::Instant;

use ferrolabel_dicom::seg::{write_binary_seg, write_labelmap_seg, SegOptions, Structure};
use ferrolabel_dicom::{assemble_dir, AssembleOptions};

fn vm_hwm_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("dicom_bench: {msg}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("assemble") if args.len() == 3 => {
            let start = Instant::now();
            let series = assemble_dir(Path::new(&args[2]), &AssembleOptions::default())
                .unwrap_or_else(|e| fail(e));
            let seconds = start.elapsed().as_secs_f64();
            let v = &series.volume;
            let sum: f64 = v.data.iter().map(|x| *x as f64).sum();
            println!(
                "{{\"seconds\": {seconds}, \"vm_hwm_bytes\": {}, \"dims\": [{}, {}, {}], \
                 \"sum\": {sum}}}",
                vm_hwm_bytes(),
                v.dims[0],
                v.dims[1],
                v.dims[2]
            );
        }
        Some("seg") if args.len() == 6 => {
            let series = assemble_dir(Path::new(&args[2]), &AssembleOptions::default())
                .unwrap_or_else(|e| fail(e));
            let labels = std::fs::read(&args[3]).unwrap_or_else(|e| fail(e));
            let names: Vec<String> = serde_json::from_str(
                &std::fs::read_to_string(&args[4]).unwrap_or_else(|e| fail(e)),
            )
            .unwrap_or_else(|e| fail(e));
            let structures: Vec<Structure> = names
                .iter()
                .enumerate()
                .map(|(i, n)| Structure {
                    value: (i + 1) as u8,
                    name: n.clone(),
                })
                .collect();
            let options = SegOptions::default();
            let mut out = Vec::new();
            for (kind, write) in [
                ("binary", write_binary_seg as fn(_, _, _, _) -> _),
                ("labelmap", write_labelmap_seg),
            ] {
                let start = Instant::now();
                let seg =
                    write(&series.info, &labels, &structures, &options).unwrap_or_else(|e| fail(e));
                let seconds = start.elapsed().as_secs_f64();
                let path = Path::new(&args[5]).join(format!("{kind}.dcm"));
                std::fs::write(&path, &seg).unwrap_or_else(|e| fail(e));
                out.push(format!(
                    "\"{kind}\": {{\"seconds\": {seconds}, \"bytes\": {}}}",
                    seg.len()
                ));
            }
            println!(
                "{{{}, \"vm_hwm_bytes\": {}}}",
                out.join(", "),
                vm_hwm_bytes()
            );
        }
        _ => fail(
            "usage: dicom_bench assemble SERIES_DIR | seg SERIES_DIR LABELS_U8 NAMES_JSON OUT_DIR",
        ),
    }
}
