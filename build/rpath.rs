//! Build script shared by the crates whose binaries link libtorch: it embeds an rpath to the
//! libtorch that torch-sys linked (`DEP_TCH_LIBTORCH_LIB`), so `ferrolabel` and the test binaries
//! run without anyone exporting LD_LIBRARY_PATH; and, when that libtorch has CUDA, it keeps
//! `libtorch_cuda` linked (nothing references it by symbol, so `--as-needed` would drop it and
//! libtorch would not see the GPU at run time).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let path = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone().into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", path.display());
        if path.join("libtorch_cuda.so").exists() {
            println!(
                "cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state"
            );
        }
    }
}
