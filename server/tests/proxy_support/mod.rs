//! Support of `tests/proxy.rs`: a real Orthanc (Debian's `orthanc` and `orthanc-dicomweb`)
//! started on loopback with a generated configuration and killed by a Drop guard (the idea of
//! `dicomweb/tests/common/mod.rs`), small CT instances written with dicom-object, and the
//! `ferrolabel` binary started with `--studies http://127.0.0.1:PORT/dicom-web`.
//!
//! Without Orthanc the test prints why and passes on a developer machine, but fails under
//! `CI=true` (`scripts/setup-system.sh` installs it).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

/// Orthanc's user (basic authentication is on, so a request without the PACS credentials
/// fails).
pub const PACS_USER: &str = "ferro";
/// Its password.
pub const PACS_PASSWORD: &str = "proxy-test-pw";

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

/// A running Orthanc; killed when dropped, also on panic.
pub struct Orthanc {
    child: Option<Child>,
    /// HTTP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    /// A blocking client (no credentials attached; see [`Orthanc::get`]).
    pub http: reqwest::blocking::Client,
}

impl Orthanc {
    /// Starts Orthanc with DICOMweb at `/dicom-web/`; `None` when it is not installed (outside
    /// CI only).
    pub fn start() -> Option<Orthanc> {
        let bin = ["/usr/sbin/Orthanc", "/usr/bin/Orthanc"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let plugin = [
            "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
            "/usr/lib/orthanc/libOrthancDicomWeb.so",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
        let (Some(bin), Some(plugin)) = (bin, plugin) else {
            assert!(
                !in_ci(),
                "Orthanc or its DICOMweb plugin is missing (apt-get install orthanc \
                 orthanc-dicomweb, see scripts/setup-system.sh): under CI=true the proxy test \
                 must run, not skip"
            );
            eprintln!("skipping: Orthanc or orthanc-dicomweb is not installed");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("ferrolabel-orthanc-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        let config = serde_json::json!({
            "Name": "ferrolabel-proxy-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": false,
            "Plugins": [plugin],
            "HttpServerEnabled": true,
            "HttpPort": port,
            "HttpCompressionEnabled": false,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": true,
            "RegisteredUsers": { PACS_USER: PACS_PASSWORD },
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
        let cfg = dir.path().join("orthanc.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = std::fs::File::create(dir.path().join("orthanc.log")).unwrap();
        let child = Command::new(bin)
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting Orthanc");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut o = Orthanc {
            child: Some(child),
            port,
            dir,
            http,
        };
        o.wait_ready();
        Some(o)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("Orthanc exited ({status}) at start:\n{}", self.log());
            }
            let ok = self
                .http
                .get(self.url("/system"))
                .basic_auth(PACS_USER, Some(PACS_PASSWORD))
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

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The DICOMweb service root.
    pub fn dicomweb_root(&self) -> String {
        self.url("/dicom-web")
    }

    /// A GET with the PACS credentials.
    pub fn get(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .get(self.url(path))
            .basic_auth(PACS_USER, Some(PACS_PASSWORD))
    }

    /// Stores one DICOM file with Orthanc's own REST API (`POST /instances`).
    pub fn upload(&self, bytes: Vec<u8>) {
        let r = self
            .http
            .post(self.url("/instances"))
            .basic_auth(PACS_USER, Some(PACS_PASSWORD))
            .body(bytes)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "Orthanc upload: {}", r.status());
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

    /// Kills Orthanc now (its port then refuses connections).
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

/// A fresh `2.25.` UID.
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

fn put_str(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn put_strs(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: &[&str]) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(v.iter().map(|s| s.to_string()).collect()),
    ));
}

/// One axial CT slice (`rows` × `cols`, int16, Explicit VR Little Endian) of `series` in
/// `study`, as the bytes of a DICOM file.
pub fn ct_slice(study: &str, series: &str, k: usize, rows: usize, cols: usize) -> Vec<u8> {
    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &new_uid());
    put_str(&mut o, tags::PATIENT_NAME, VR::PN, "Proxy^Test");
    put_str(&mut o, tags::PATIENT_ID, VR::LO, "FL-PROXY");
    put_str(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, study);
    put_str(&mut o, tags::STUDY_DATE, VR::DA, "20260101");
    put_str(&mut o, tags::STUDY_ID, VR::SH, "1");
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, series);
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, "3");
    put_str(&mut o, tags::MODALITY, VR::CS, "CT");
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &(k + 1).to_string());
    put_str(
        &mut o,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &format!("{series}.1"),
    );
    let z = format!("{}", 2.5 * k as f64);
    put_strs(
        &mut o,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &["-20", "-15", &z],
    );
    put_strs(
        &mut o,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &["1", "0", "0", "0", "1", "0"],
    );
    put_strs(&mut o, tags::PIXEL_SPACING, VR::DS, &["0.75", "0.75"]);
    put_str(&mut o, tags::SLICE_THICKNESS, VR::DS, "2.5");
    put_str(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    for (tag, v) in [
        (tags::SAMPLES_PER_PIXEL, 1u16),
        (tags::ROWS, rows as u16),
        (tags::COLUMNS, cols as u16),
        (tags::BITS_ALLOCATED, 16),
        (tags::BITS_STORED, 16),
        (tags::HIGH_BIT, 15),
        (tags::PIXEL_REPRESENTATION, 1),
    ] {
        o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    }
    put_str(&mut o, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
    put_str(&mut o, tags::RESCALE_SLOPE, VR::DS, "1");
    let px: Vec<u16> = (0..rows * cols)
        .map(|i| ((i as i32 * 37 + k as i32 * 101) % 2000 - 300) as i16 as u16)
        .collect();
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(px.into()),
    ));
    let file = o
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

/// A `multipart/related; type="application/dicom"` STOW-RS body of `parts`; (content type,
/// body).
pub fn stow_body(parts: &[Vec<u8>]) -> (String, Vec<u8>) {
    let boundary = format!("fl-proxy-{}", uuid::Uuid::new_v4().simple());
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

/// The boundary parameter of a multipart content type.
pub fn boundary_of(content_type: &str) -> String {
    content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no boundary in {content_type:?}"))
}

/// `body` with every occurrence of `from` replaced by `to`.
pub fn replace_bytes(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// A raw HTTP/1.1 GET of `path` exactly as written (no client-side normalisation of `..`):
/// (status, body).
pub fn raw_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Adds a user with `ferrolabel auth add-user` (password on standard input).
pub fn add_user(bin: &str, users: &Path, name: &str, password: &str, role: &str) {
    let mut child = Command::new(bin)
        .args(["auth", "add-user", "--users"])
        .arg(users)
        .args(["--username", name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "add-user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `ferrolabel` server whose studies are a DICOMweb service; killed on drop.
pub struct PacsServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    dir: tempfile::TempDir,
    /// A blocking client.
    pub http: reqwest::blocking::Client,
}

impl PacsServer {
    /// Starts `bin` with `--studies <dicomweb_root>`, the PACS credentials, a private cache
    /// folder and `extra` arguments, and waits until it answers.
    pub fn start(
        bin: &str,
        app: &Path,
        bundle: &Path,
        dicomweb_root: &str,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ferrolabel-proxy-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = dir.path().join("server-stderr.txt");
        let child = Command::new(bin)
            .arg("start_server")
            .arg("--app")
            .arg(app)
            .args(["--studies", dicomweb_root])
            .arg("--conf")
            .arg("bundle_dir")
            .arg(bundle)
            .args(["--dicomweb-username", PACS_USER])
            .args(["--dicomweb-password", PACS_PASSWORD])
            .arg("--dicomweb-cache-path")
            .arg(dir.path().join("cache"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--threads", "1"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut s = PacsServer {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            http,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited with {status}: {}", self.stderr());
            }
            if let Ok(r) = self
                .http
                .get(self.url("/info/"))
                .timeout(Duration::from_secs(2))
                .send()
            {
                if r.status().is_success() || r.status() == 401 {
                    return;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "server not ready: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resets the server's peak resident size (`VmHWM`; `/proc/PID/clear_refs` 5).
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
    }

    /// (`VmRSS`, `VmHWM`) of the server, in bytes.
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {key} in /proc/PID/status"))
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server-stderr.txt")).unwrap_or_default()
    }

    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for PacsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
