//! Sliding-window inference.

pub mod sliding;
pub mod window;

pub use sliding::{predict_labels, BlendMode, PadMode, SlidingWindow, WindowObserver};
