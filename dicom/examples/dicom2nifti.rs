//! Assembles a DICOM series (a folder or a zip) and writes it as a gzip NIfTI-1 (`f32`):
//! `cargo run --release -p ferrolabel-dicom --example dicom2nifti -- SERIES OUT.nii.gz`.
//! Prints the grid, the RAS affine and the time the assembly took.

use std::path::Path;
use std::time::Instant;

use ferrolabel_dicom::{assemble_dir, assemble_zip, AssembleOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: dicom2nifti SERIES_DIR_OR_ZIP OUT.nii.gz");
        std::process::exit(2);
    }
    let input = Path::new(&args[1]);
    let start = Instant::now();
    let result = if input.is_dir() {
        assemble_dir(input, &AssembleOptions::default())
    } else {
        std::fs::read(input)
            .map_err(|e| ferrolabel_dicom::DicomError::Io {
                context: format!("reading {}", input.display()),
                source: e,
            })
            .and_then(|bytes| assemble_zip(&bytes, &AssembleOptions::default()))
    };
    let series = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dicom2nifti: {e}");
            std::process::exit(1);
        }
    };
    let took = start.elapsed();
    let v = &series.volume;
    println!(
        "grid {:?}, {} slices, assembled in {:.3} s",
        v.dims,
        series.info.slices.len(),
        took.as_secs_f64()
    );
    for row in &v.affine {
        println!("  {row:?}");
    }
    if let Err(e) =
        ferrolabel_imaging::write_nifti_f32(Path::new(&args[2]), &v.data, v.dims, &v.affine)
    {
        eprintln!("dicom2nifti: {e}");
        std::process::exit(1);
    }
}
