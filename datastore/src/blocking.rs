//! Blocking work off the async runtime: the workspace's one helper for it, [`blocking`].
//!
//! File I/O, hashing, image decoding and encoding block a thread; on an async worker they
//! would stall every request that worker serves. [`blocking`] runs such a closure on tokio's
//! blocking pool and hands back its result. The closure's error type is the caller's own
//! (this crate's [`crate::DatastoreError`], the apps' `AppError`, the server's `ApiError`, an
//! `std::io::Error` ...), so a caller writes `blocking(move || work()).await?` and nothing else;
//! a closure that panics (or a runtime that shuts down while it waits) becomes
//! [`TaskFailed`], which each error type converts into its own "task failed" variant.
//!
//! It lives here because the datastore is the lowest crate that runs async code; the apps and
//! the server build on it.

use thiserror::Error;

/// A blocking task that ended without a result: it panicked, or the runtime shut down while
/// it waited.
#[derive(Debug, Error)]
#[error("background task failed: {0}")]
pub struct TaskFailed(pub String);

impl From<tokio::task::JoinError> for TaskFailed {
    fn from(e: tokio::task::JoinError) -> Self {
        TaskFailed(e.to_string())
    }
}

impl From<TaskFailed> for std::io::Error {
    fn from(e: TaskFailed) -> Self {
        std::io::Error::other(e)
    }
}

/// Runs `f` on tokio's blocking pool and returns its result; a panic in `f` is an
/// `E::from(TaskFailed)`, never a panic of the caller.
pub async fn blocking<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<TaskFailed> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(TaskFailed::from(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_result_and_the_error_of_the_closure() {
        let ok: Result<u32, std::io::Error> = blocking(|| Ok(7)).await;
        assert_eq!(ok.unwrap(), 7);
        let err: Result<u32, std::io::Error> =
            blocking(|| Err(std::io::Error::other("disk on fire"))).await;
        assert_eq!(err.unwrap_err().to_string(), "disk on fire");
    }

    #[tokio::test]
    async fn a_panic_is_an_error_of_the_callers_type() {
        let r: Result<(), crate::DatastoreError> = blocking(|| panic!("boom")).await;
        match r {
            Err(crate::DatastoreError::Task(m)) => assert!(m.contains("panicked"), "{m}"),
            other => panic!("expected DatastoreError::Task, got {other:?}"),
        }
    }
}
