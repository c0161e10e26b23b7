//! Build script: makes Cargo re-run the build (and so re-embed the migrations that
//! `sqlx::migrate!` reads at compile time) when a file under `migrations/` changes or a
//! new migration is added, even if no Rust source changed.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
