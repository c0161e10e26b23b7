//! A real Orthanc on loopback, started from a generated configuration and killed on drop.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Test user of the Orthanc configuration (basic authentication is on, so a request without
/// these credentials fails).
pub const USER: &str = "ferro";
/// Its password.
pub const PASSWORD: &str = "label-test-pw";

/// Whether the tests run in CI (`CI` set to `true` or `1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Orthanc's binary and the DICOMweb plugin, or `None` when missing; under `CI=true` a missing
/// Orthanc panics instead (the tests must run there, not skip).
pub fn orthanc_install() -> Option<(PathBuf, PathBuf)> {
    let bin = first_existing(&["/usr/sbin/Orthanc", "/usr/bin/Orthanc"]);
    let plugin = first_existing(&[
        "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
        "/usr/lib/orthanc/libOrthancDicomWeb.so",
    ]);
    match (bin, plugin) {
        (Some(b), Some(p)) => Some((b, p)),
        _ => {
            assert!(
                !in_ci(),
                "Orthanc or its DICOMweb plugin is missing (apt-get install orthanc \
                 orthanc-dicomweb, see scripts/setup-system.sh): under CI=true the Orthanc \
                 tests must run, not skip"
            );
            eprintln!("skipping: Orthanc or orthanc-dicomweb is not installed");
            None
        }
    }
}

/// A `multipart/related; type="application/dicom"` STOW-RS body of `parts`: (content type,
/// body).
pub fn stow_body(parts: &[Vec<u8>]) -> (String, Vec<u8>) {
    let boundary = format!("fl-test-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    for p in parts {
        write!(
            body,
            "--{boundary}\r\nContent-Type: application/dicom\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
        body,
    )
}

/// A running Orthanc with DICOMweb at `/dicom-web/`, basic auth ([`USER`]/[`PASSWORD`]), the
/// DICOM port disabled and storage in a temporary folder; killed (and its storage removed) when
/// dropped, also on panic.
pub struct Orthanc {
    child: Option<Child>,
    bin: PathBuf,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Configuration (`orthanc.json`), storage and log (`orthanc.log`).
    pub dir: tempfile::TempDir,
    /// A blocking client (no credentials attached; see [`Orthanc::get`]).
    pub http: reqwest::blocking::Client,
}

impl Orthanc {
    /// Starts Orthanc and waits until it answers; `None` when Orthanc is not installed (outside
    /// CI only, see [`orthanc_install`]).
    pub fn start() -> Option<Orthanc> {
        let (bin, plugin) = orthanc_install()?;
        let dir = tempfile::Builder::new()
            .prefix("ferrolabel-orthanc-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        let config = serde_json::json!({
            "Name": "ferrolabel-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": false,
            "Plugins": [plugin],
            "HttpServerEnabled": true,
            "HttpPort": port,
            "HttpCompressionEnabled": false,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": true,
            "RegisteredUsers": { USER: PASSWORD },
            "DicomServerEnabled": false,
            "OrthancExplorerEnabled": false,
            "WebDavEnabled": false,
            "DicomWeb": {
                "Enable": true,
                "Root": "/dicom-web/",
                "EnableWado": false,
                "Host": format!("127.0.0.1:{port}"),
                "Ssl": false
            }
        });
        std::fs::write(
            dir.path().join("orthanc.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut o = Orthanc {
            child: None,
            bin,
            port,
            dir,
            http,
        };
        o.resume_service();
        Some(o)
    }

    /// Starts Orthanc (again, after [`Orthanc::stop`]) on the same port and storage, and waits
    /// until it answers.
    pub fn resume_service(&mut self) {
        assert!(self.child.is_none(), "Orthanc is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("orthanc.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg(self.dir.path().join("orthanc.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting Orthanc");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("Orthanc exited ({status}) at start:\n{}", self.log());
            }
            let ok = self
                .get("/system")
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Orthanc did not answer within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Orthanc's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The DICOMweb service root (`http://127.0.0.1:PORT/dicom-web`).
    pub fn base_url(&self) -> String {
        self.url("/dicom-web")
    }

    /// A GET of Orthanc's `path` with the test user.
    pub fn get(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .get(self.url(path))
            .basic_auth(USER, Some(PASSWORD))
    }

    /// Stores one DICOM file with Orthanc's own REST API (`POST /instances`).
    pub fn upload(&self, bytes: Vec<u8>) {
        let r = self
            .http
            .post(self.url("/instances"))
            .basic_auth(USER, Some(PASSWORD))
            .body(bytes)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "Orthanc upload: {}", r.status());
    }

    /// Stores `files` in `study` with STOW-RS (one request).
    pub fn store(&self, study: &str, files: &[PathBuf]) {
        let parts: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let (content_type, body) = stow_body(&parts);
        let r = self
            .http
            .post(self.url(&format!("/dicom-web/studies/{study}")))
            .basic_auth(USER, Some(PASSWORD))
            .header("Content-Type", content_type)
            .header("Accept", "application/dicom+json")
            .body(body)
            .send()
            .unwrap();
        assert!(
            r.status().is_success(),
            "STOW: {} {}",
            r.status(),
            r.text().unwrap_or_default()
        );
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("Orthanc is running").id();
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {pid}");
    }

    /// Freezes Orthanc (SIGSTOP): connections are still accepted by the kernel, never answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused Orthanc (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills Orthanc now (the port then refuses connections); its storage stays until drop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) process
        self.stop();
    }
}
