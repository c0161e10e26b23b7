//! The two database backends the datastore tests run on: SQLite (a file in the test's temp
//! folder, the default) and PostgreSQL (a fresh database per test on one throwaway cluster per
//! test binary, `ferrolabel_testkit::Postgres`).
//!
//! `on_both!(name, ...)` turns each `async fn name(db: Db)` into two tests, `name::sqlite` and
//! `name::postgres`.

#![allow(dead_code)]

use std::path::Path;

use ferrolabel_datastore::{Backend, Datastore, DatastoreOptions};
use ferrolabel_testkit::Postgres;

/// Where a test's datastore keeps its rows.
#[derive(Debug, Clone)]
pub struct Db {
    /// `None`: SQLite in the studies folder; `Some(postgres://...)`: that database.
    pub url: Option<String>,
}

impl Db {
    /// SQLite (the default options).
    pub fn sqlite() -> Db {
        Db { url: None }
    }

    /// A new empty database on the test binary's PostgreSQL cluster.
    pub fn postgres() -> Db {
        Db {
            url: Some(Postgres::shared().fresh_database()),
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        if self.url.is_some() {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// Default options on this database.
    pub fn options(&self) -> DatastoreOptions {
        DatastoreOptions {
            url: self.url.clone(),
            ..DatastoreOptions::default()
        }
    }

    /// Opens the studies folder `dir` on this database.
    pub async fn open(&self, dir: &Path) -> Datastore {
        let ds = Datastore::open(dir, self.options()).await.expect("open");
        assert_eq!(ds.backend(), self.backend());
        ds
    }
}

/// Runs `body` on a fresh multi-threaded runtime (4 workers).
pub fn run<F: std::future::Future<Output = ()>>(body: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body)
}

/// `on_both!(a, b)`: tests `a::sqlite`, `a::postgres`, `b::sqlite`, `b::postgres`, each calling
/// `async fn a(db: Db)` with its backend.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    $crate::common::run(super::$name($crate::common::Db::sqlite()))
                }

                #[test]
                fn postgres() {
                    let db = $crate::common::Db::postgres();
                    $crate::common::run(super::$name(db))
                }
            }
        )*
    };
}
