//! Build script shared by the crates whose binaries link libtorch: it embeds an rpath to the
//! libtorch that torch-sys linked (`DEP_TCH_LIBTORCH_LIB`), so `ferrolabel` and the test binaries
//! run without anyone exporting LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let dir = std::fs::canonicalize(&dir).map(|p| p.display().to_string()).unwrap_or(dir);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // keep libtorch_cuda and friends linked even though no symbol is referenced directly,
        // so a CUDA build of libtorch can find the GPU at run time
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    }
}
