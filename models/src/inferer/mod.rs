//! Sliding-window inference.

pub mod blend;
pub mod sliding;
pub mod window;

pub use sliding::{
    predict_labels, predict_labels_timed, BlendMode, PadMode, SlidingWindow, WindowObserver,
};

#[cfg(test)]
mod tests;
