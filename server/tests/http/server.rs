//! The server of the in-process tests: `ferrolabel::serve` (the code `start_server` runs) on
//! `127.0.0.1:0` in a thread of this test process, spoken to over real HTTP. Training workers
//! run as `ferrolabel dev train-worker` (the binary under test, not this test binary).
//!
//! One server at a time per test process (a thread may hold several): servers of parallel tests
//! wait for each other, so each server's log file (`/logs/`, [`Server::stderr`]) holds its own
//! lines only, whatever `--test-threads` says.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use serde_json::Value;

use crate::common::{example_ct, repo, Opts, BIN};

/// Which thread may run servers now, and how many it holds.
static TURN: Mutex<Option<(ThreadId, usize)>> = Mutex::new(None);
static TURN_FREE: Condvar = Condvar::new();

/// This thread's turn to run servers; released on drop.
struct Turn;

impl Turn {
    fn take() -> Turn {
        let me = std::thread::current().id();
        let mut t = TURN.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &mut *t {
                None => {
                    *t = Some((me, 1));
                    return Turn;
                }
                Some((owner, n)) if *owner == me => {
                    *n += 1;
                    return Turn;
                }
                Some(_) => t = TURN_FREE.wait(t).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut t = TURN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = &mut *t {
            *n -= 1;
            if *n == 0 {
                *t = None;
                TURN_FREE.notify_all();
            }
        }
    }
}

/// A server running in this process; stopped on drop (running jobs handed back, engine thread
/// ended, datastore closed).
pub struct Server {
    /// `http://127.0.0.1:<port>` (`https` with `--ssl-certfile`).
    pub base: String,
    /// The studies folder (empty and unused when `--studies` is a DICOMweb URL).
    pub studies: tempfile::TempDir,
    /// Blocking HTTP client.
    pub http: reqwest::blocking::Client,
    /// The state the handlers share (its engine, scheduler, datastore), for tests that need
    /// to reach past HTTP (e.g. stop the inference engine).
    pub state: actix_web::web::Data<ferrolabel::state::AppState>,
    log: PathBuf,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
    _turn: Turn,
}

impl Server {
    /// Starts a server on a fresh studies folder (the example CT and `opts.files` in it).
    pub fn start(opts: Opts) -> Server {
        let studies = tempfile::Builder::new()
            .prefix("ferrolabel-studies-")
            .tempdir()
            .unwrap();
        if opts.with_example {
            std::fs::copy(example_ct(), studies.path().join("example_ct.nii.gz")).unwrap();
        }
        for (name, bytes) in &opts.files {
            std::fs::write(studies.path().join(name), bytes).unwrap();
        }
        let folder = studies.path().as_os_str().to_owned();
        Server::start_on(folder, studies, opts)
    }

    /// Starts a server with `--studies studies_arg` (a folder or a DICOMweb URL); `studies` is
    /// kept alive with it.
    pub fn start_on(studies_arg: OsString, studies: tempfile::TempDir, opts: Opts) -> Server {
        let turn = Turn::take();
        let mut argv: Vec<OsString> = vec![
            "--app".into(),
            repo().join("apps/wholebody").into(),
            "--studies".into(),
            studies_arg,
            "--conf".into(),
            "bundle_dir".into(),
            opts.bundle.clone().into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--threads".into(),
            "1".into(),
            "--workers".into(),
            "2".into(),
        ];
        argv.extend(opts.args.iter().map(OsString::from));
        let args = ferrolabel::serve::parse_args(&argv).unwrap_or_else(|e| panic!("{e}"));
        let plan = ferrolabel::serve::plan(args).unwrap_or_else(|e| panic!("{e:#}"));
        let log = plan.log_file().to_path_buf();
        ferrolabel::logging::init_file_only("info", &log).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("test-server".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let serving = match plan.build(Some(BIN.into())).await {
                        Ok(b) => {
                            let state = b.state().clone();
                            b.without_signals().bind().map(|s| (s, state))
                        }
                        Err(e) => Err(e),
                    };
                    match serving {
                        Ok((s, state)) => {
                            let _ = tx.send(Ok((s.addrs()[0].port(), s.handle(), state)));
                            if let Err(e) = s.run().await {
                                eprintln!("in-process server: {e:#}");
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(format!("{e:#}")));
                        }
                    }
                })
            })
            .unwrap();
        let (port, handle, state) = match rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => panic!("server did not start: {e}"),
            Err(_) => panic!(
                "server thread died: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        // with `--ssl-certfile CERT` the server speaks HTTPS, and the client trusts CERT
        let cert = opts
            .args
            .iter()
            .position(|a| a == "--ssl-certfile")
            .and_then(|i| opts.args.get(i + 1));
        let mut http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600));
        if let Some(cert) = cert {
            let pem = std::fs::read(cert).unwrap();
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        let scheme = if cert.is_some() { "https" } else { "http" };
        Server {
            base: format!("{scheme}://127.0.0.1:{port}"),
            studies,
            http: http.build().unwrap(),
            state,
            log,
            handle,
            thread: Some(thread),
            _turn: turn,
        }
    }

    /// The server's log so far (its `app.log`: what `start_server` also writes to stderr).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET, returning status and JSON (`null` when the body is not JSON).
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // not graceful: the client's idle keep-alive connections would hold a graceful stop
        drop(self.handle.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
