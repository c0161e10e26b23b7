//! Test-only support shared by the DICOMweb tests (`dicomweb/tests/`) and the server's PACS and
//! proxy tests (`server/tests/pacs.rs`, `server/tests/proxy.rs`): a real Orthanc (Debian's
//! `orthanc` and `orthanc-dicomweb` packages) started on loopback with a generated
//! configuration and killed by a Drop guard ([`Orthanc`]), and small DICOM series to load into
//! it ([`write_small_series`], [`ct_slice`], [`shared_series_with_uids`]).
//!
//! Without Orthanc, [`Orthanc::start`] prints why and returns `None` on a developer machine, but
//! panics under `CI=true` (`scripts/setup-system.sh` installs it): the tests never skip in CI.
//!
//! For the multi-server tests: a throwaway PostgreSQL cluster from Debian's `postgresql`
//! package ([`Postgres`]) and haproxy on loopback in front of several servers ([`Haproxy`],
//! rendered from `deploy/team/haproxy.cfg`). Both panic when their package is missing. For object
//! storage: moto's S3 server on loopback ([`S3Server`], `moto[server]` from PyPI; `None` without
//! it on a developer machine, a panic under `CI=true`). For distributed training: a throwaway
//! single-node Slurm cluster ([`Slurm`], Debian's `slurm-wlm` and `munge`; a panic without them).
//!
//! This crate is test support only: it is `publish = false` and must only ever be a
//! `[dev-dependencies]` entry, never a normal dependency of any crate of the workspace.

mod haproxy;
mod orthanc;
mod postgres;
mod procs;
mod s3;
mod series;
mod slurm;

pub use haproxy::{Haproxy, HAPROXY_TEMPLATE};
pub use postgres::{postgres_bin_dir, Postgres, PG_USER};
pub use procs::{alive, processes_with_env};
pub use s3::{python, S3Server, S3_KEY_ID, S3_REGION, S3_SECRET};
pub use slurm::{slurm_program, Slurm, SLURM_PARTITION};

pub use orthanc::{free_port, in_ci, orthanc_install, stow_body, Orthanc, PASSWORD, USER};
pub use series::{
    ct_slice, new_uid, repo_root, shared_series_with_uids, write_small_series, SmallSeries, Written,
};
