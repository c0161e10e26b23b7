//! Training with the bundle's recipe (`docs/bundle.md` §5): data preparation and a
//! bounded cache ([`data`]), DiceCE ([`loss`]), the validation metric ([`metric`]), AdamW
//! ([`optim`]), fp16 loss scaling ([`scaler`]), the loop that writes the best checkpoint
//! ([`trainer`]) and the resume state that lets a stopped run continue exactly ([`state`]).

pub mod data;
pub mod events;
pub mod loss;
pub mod metric;
pub mod optim;
pub mod scaler;
pub mod state;
pub mod trainer;

pub use data::{Pair, PrepareOptions};
pub use state::state_path;
pub use trainer::{
    train, EpochRecord, TrainConfig, TrainEvent, TrainJob, TrainObserver, TrainOutcome,
};
