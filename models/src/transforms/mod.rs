//! The bundle's preprocessing transforms and their inverses.

pub mod affine;
pub mod intensity;
pub mod orientation;
pub mod spacing;
