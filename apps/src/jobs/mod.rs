//! The job scheduler: every background job of the server in one place (docs/jobs.md).
//!
//! Jobs are rows of the datastore's `jobs` table; one runner per process claims them in
//! priority order, runs each under `catch_unwind`, keeps its lease alive with a heartbeat and
//! records the outcome. Job code reports through a [`JobHandle`].

mod handle;

pub use handle::{JobHandle, MAX_DETAILS};

/// A new job id (a random UUID v4, as MONAI Label's task ids).
pub fn new_id() -> String {
    use rand::Rng;
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
