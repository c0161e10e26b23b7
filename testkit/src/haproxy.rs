//! haproxy (Debian's `haproxy`) on loopback in front of several servers, from the deployment
//! template `deploy/team/haproxy.cfg` rendered with the test's ports; killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The team deployment's haproxy configuration (`deploy/team/haproxy.cfg`), which
/// [`Haproxy::render`] turns into a loopback one.
pub const HAPROXY_TEMPLATE: &str = include_str!("../../deploy/team/haproxy.cfg");

/// A running haproxy that balances round robin over servers on 127.0.0.1 (health checks on
/// `GET /info/`, retries with redispatch); killed on drop.
pub struct Haproxy {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The rendered `haproxy.cfg` and `haproxy.log`.
    pub dir: tempfile::TempDir,
}

impl Haproxy {
    /// [`HAPROXY_TEMPLATE`] with its `bind` line on `127.0.0.1:port` and its `server` lines
    /// replaced by one per port in `backends` (`s1`, `s2`, ... on 127.0.0.1).
    pub fn render(port: u16, backends: &[u16]) -> String {
        let mut out = String::new();
        let (mut binds, mut servers) = (0, 0);
        for line in HAPROXY_TEMPLATE.lines() {
            let t = line.trim_start();
            if t.starts_with("bind ") {
                binds += 1;
                out.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            } else if t.starts_with("server ") {
                // the template's server lines are replaced at the first one
                if servers == 0 {
                    for (i, b) in backends.iter().enumerate() {
                        out.push_str(&format!("    server s{} 127.0.0.1:{b}\n", i + 1));
                    }
                }
                servers += 1;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        assert!(
            binds == 1 && servers > 0,
            "deploy/team/haproxy.cfg: expected one `bind` line and `server` lines"
        );
        out
    }

    /// Starts haproxy in front of `backends` (ports on 127.0.0.1) and waits until it accepts
    /// connections; panics naming the package when haproxy is not installed.
    pub fn start(backends: &[u16]) -> Haproxy {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!(
                    "haproxy not found: install Debian's `haproxy` package (apt-get install \
                     haproxy; scripts/setup-system.sh does)"
                )
            });
        let dir = tempfile::Builder::new()
            .prefix("ferrolabel-haproxy-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, Haproxy::render(port, backends)).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting haproxy");
        let mut h = Haproxy { child, port, dir };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = h.child.try_wait().unwrap() {
                panic!("haproxy exited ({status}) at start:\n{}", h.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "haproxy did not listen within 30 s:\n{}",
                h.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        h
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// haproxy's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-line HTTP server on a free port that answers every request with `name`.
    fn tiny_server(name: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
            }
        });
        port
    }

    #[test]
    fn balances_round_robin_and_skips_a_dead_backend() {
        let (a, b) = (tiny_server("a"), tiny_server("b"));
        let dead = free_port(); // nothing listens: refused, redispatched
        let h = Haproxy::start(&[a, dead, b]);
        let rendered = std::fs::read_to_string(h.dir.path().join("haproxy.cfg")).unwrap();
        assert!(rendered.contains(&format!("server s2 127.0.0.1:{dead}")));
        assert!(!rendered.contains("10.0.0.11"));
        let http = reqwest::blocking::Client::new();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let r = http.get(format!("{}/info/", h.base())).send().unwrap();
            assert_eq!(r.status(), 200, "{}", h.log());
            seen.push(r.text().unwrap());
        }
        assert!(
            seen.iter().any(|s| s == "a") && seen.iter().any(|s| s == "b"),
            "{seen:?}"
        );
    }
}
