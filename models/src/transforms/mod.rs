//! The bundle's preprocessing transforms and their inverses, and the training-only crops and
//! smoothing.

pub mod affine;
pub mod crop;
pub mod intensity;
pub mod orientation;
pub mod smooth;
pub mod spacing;
