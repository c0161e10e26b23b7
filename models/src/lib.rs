//! The libtorch engine of ferrolabel.
//!
//! Owns everything that touches torch: MONAI's SegResNet with state_dict-compatible variable
//! names ([`network`]), weight loading and saving, the bundle's preprocessing transforms and
//! their inverses ([`transforms`]), bounded-memory sliding-window inference ([`inferer`]), the
//! end-to-end pipeline ([`pipeline`]) and the engine actor that serialises GPU/CPU work
//! ([`engine`]).
//!
//! It must not depend on HTTP, SQL or the datastore: it takes volumes and returns label maps.

pub mod bundle;
pub mod device;
pub mod engine;
pub mod error;
pub mod inferer;
pub mod network;
pub mod pipeline;
pub mod probability;
pub mod train;
pub mod transforms;

pub use bundle::{Bundle, Resolution};
pub use device::{parse_device, Device, Precision};
pub use engine::{Engine, EngineOptions, InferRequest, Priority};
pub use error::{ModelsError, Result};
