//! Networks and their weights.

pub mod segresnet;
pub mod weights;

pub use segresnet::{SegResNet, SegResNetConfig};
