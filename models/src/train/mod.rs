//! Training with the bundle's recipe (`docs/bundle.md` §5): data preparation and a
//! bounded cache ([`data`]), DiceCE ([`loss`]), the validation metric ([`metric`]), AdamW
//! ([`optim`]), fp16 loss scaling ([`scaler`]) and the loop that writes the best checkpoint
//! ([`trainer`]).

pub mod data;
pub mod loss;
pub mod metric;
pub mod optim;
pub mod scaler;
pub mod trainer;

pub use data::{Pair, PrepareOptions};
pub use trainer::{
    run_seed, train, EpochRecord, TrainConfig, TrainEvent, TrainJob, TrainObserver, TrainOutcome,
};
