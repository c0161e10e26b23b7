//! A throwaway PostgreSQL cluster from Debian's `postgresql` package: `initdb` into a temporary
//! folder, `postgres` on 127.0.0.1:<free port> and a unix socket in that folder, stopped (fast
//! shutdown) and deleted on drop or when the test process exits, however it exits.
//!
//! PostgreSQL refuses to run as root; under root (here and in CI) `initdb` and `postgres` run as
//! the `postgres` system user (created by the Debian package), with the folder chowned to it.
//!
//! A small `sh` supervisor owns the server: it starts `postgres`, then blocks reading its stdin,
//! a pipe whose only writer is the test process. When the test process drops the [`Postgres`]
//! or exits (even SIGKILLed), the pipe closes and the supervisor shuts the cluster down and
//! removes its folder, so a cluster kept in a `static` ([`Postgres::shared`]) is cleaned up too.

use crate::procs::alive;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::free_port;

/// The superuser of the test clusters (trust authentication, loopback only).
pub const PG_USER: &str = "postgres";

/// The supervisor: `$1` the cluster folder, the rest the command that runs `postgres`. On EOF
/// it asks for a fast shutdown (SIGINT), waits up to 30 s for postgres to exit (a zombie: it is
/// not reaped yet, so its pid cannot have been reused), SIGKILLs it if still there, and removes
/// the folder.
const SUPERVISOR: &str = r#"
dir=$1; shift
trap '' INT TERM HUP
"$@" >>"$dir/postgres.log" 2>&1 &
pg=$!
echo "$pg"
read -r _ || true
kill -INT "$pg" 2>/dev/null
i=0
while [ "$i" -lt 300 ] && [ -e "/proc/$pg" ] && ! grep -q ') Z' "/proc/$pg/stat" 2>/dev/null; do
  sleep 0.1; i=$((i+1))
done
[ "$i" -lt 300 ] || kill -KILL "$pg" 2>/dev/null
wait "$pg"
rm -rf "$dir"
"#;

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` and `postgres`; panics
/// naming the package when there is none (the tests that need PostgreSQL never skip).
pub fn postgres_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/<version>/bin: install \
             Debian's `postgresql` package (apt-get install postgresql; scripts/setup-system.sh does)"
        ),
    }
}

fn id_of(args: &[&str]) -> u32 {
    let out = Command::new("id")
        .args(args)
        .output()
        .expect("running `id`");
    assert!(
        out.status.success(),
        "`id {}` failed: {} (under root the PostgreSQL tests run the server as the `postgres` \
         user that Debian's `postgresql` package creates)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The (uid, gid) to run PostgreSQL as: the `postgres` user under root, `None` (ourselves)
/// otherwise.
fn run_as() -> Option<(u32, u32)> {
    (id_of(&["-u"]) == 0).then(|| (id_of(&["-u", PG_USER]), id_of(&["-g", PG_USER])))
}

/// A running throwaway PostgreSQL cluster; stopped and deleted on drop (or at process exit).
pub struct Postgres {
    supervisor: Mutex<Option<Child>>,
    pg_pid: u32,
    /// Its TCP port on 127.0.0.1 (the unix socket in [`Postgres::dir`] has the same number).
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    next_db: AtomicU64,
}

impl Postgres {
    /// One cluster for the whole test binary (started at first use, stopped at process exit);
    /// give each test its own database with [`Postgres::fresh_database`].
    pub fn shared() -> &'static Postgres {
        static CLUSTER: OnceLock<Postgres> = OnceLock::new();
        CLUSTER.get_or_init(Postgres::start)
    }

    /// Runs `initdb` into a new temporary folder, starts `postgres` and waits until it accepts
    /// connections. Panics (with the log) when the binaries are missing or it does not start.
    pub fn start() -> Postgres {
        let bin = postgres_bin_dir();
        let as_user = run_as();
        let dir = tempfile::Builder::new()
            .prefix("ferrolabel-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", PG_USER, "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"])
            .current_dir(&dir)
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = as_user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("running initdb");
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = free_port();
        let mut server: Vec<String> = Vec::new();
        if let Some((uid, gid)) = as_user {
            server.extend([
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ]);
        }
        server.push(bin.join("postgres").display().to_string());
        server.extend(["-D".into(), data.display().to_string()]);
        server.extend(["-p".into(), port.to_string()]);
        server.extend(["-k".into(), dir.display().to_string()]);
        for setting in [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=300",
            "shared_buffers=64MB",
            "logging_collector=off",
        ] {
            server.extend(["-c".into(), setting.into()]);
        }
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg(&dir)
            .args(&server)
            .current_dir(&dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // its own process group: a Ctrl-C of the test run reaches the test process, whose
            // exit then stops the cluster in order
            .process_group(0)
            .spawn()
            .expect("starting the PostgreSQL supervisor (sh)");
        let mut line = String::new();
        BufReader::new(supervisor.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pg_pid: u32 = line.trim().parse().expect("the supervisor's postgres pid");
        let pg = Postgres {
            supervisor: Mutex::new(Some(supervisor)),
            pg_pid,
            port,
            dir,
            bin,
            next_db: AtomicU64::new(0),
        };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            assert!(
                alive(self.pg_pid),
                "postgres exited at start:\n{}",
                self.log()
            );
            if self.try_psql("postgres", "SELECT 1").is_ok() {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "postgres did not accept connections within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cluster folder (data in `data/`, the unix socket, `postgres.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The connection URL of database `db` (`postgres://postgres@127.0.0.1:PORT/db`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (lowercase letters, digits and `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "database name {name:?}: use [a-z_][a-z0-9_]*, at most 63 characters"
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// Creates a new database with a unique name (`t<n>_<pid>`) and returns its URL: one per
    /// test on a [`Postgres::shared`] cluster.
    pub fn fresh_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("t{n}_{}", std::process::id()))
    }

    /// Runs `sql` in database `db` with `psql` (unaligned, tuples only) and returns its
    /// standard output, or its error text.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
            ])
            .args(["-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .expect("running psql (Debian's postgresql-client, installed with postgresql)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// [`Postgres::try_psql`] that panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql -d {db} -c {sql:?}: {e}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut s) = self.supervisor.get_mut().unwrap().take() {
            // closing its stdin tells the supervisor to stop postgres and remove the folder
            drop(s.stdin.take());
            let _ = s.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_creates_two_databases_connects_and_cleans_up() {
        let pg = Postgres::start();
        let dir = pg.dir().to_path_buf();
        assert!(dir.join("data/PG_VERSION").exists());
        let a = pg.create_database("alpha");
        let b = pg.fresh_database();
        assert_eq!(
            a,
            format!("postgres://postgres@127.0.0.1:{}/alpha", pg.port)
        );
        let b_name = b.rsplit('/').next().unwrap().to_string();
        pg.psql(
            "alpha",
            "CREATE TABLE t (x BIGINT); INSERT INTO t VALUES (41), (1)",
        );
        assert_eq!(pg.psql("alpha", "SELECT sum(x) FROM t").trim(), "42");
        // databases are separate
        let err = pg.try_psql(&b_name, "SELECT * FROM t").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        assert_eq!(pg.psql(&b_name, "SELECT current_database()").trim(), b_name);
        // the unix socket is there too
        assert!(dir.join(format!(".s.PGSQL.{}", pg.port)).exists());
        let port = pg.port;
        drop(pg);
        assert!(!dir.exists(), "cluster folder left behind");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
