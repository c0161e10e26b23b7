//! Support of tests/pacs.rs: a real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) on
//! loopback that can be stopped and started again on the same port and storage, series to load
//! into it (the shipped JPEG 2000 series with its blank UIDs filled, small series written with
//! dicom-object), and a `ferrolabel` started with `--studies http://127.0.0.1:PORT/dicom-web`.
//! Without Orthanc the test prints why and passes outside CI; under `CI=true` it fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

use crate::common;

/// Test user of the Orthanc configuration (basic authentication is on).
pub const USER: &str = "ferro";
/// Its password.
pub const PASSWORD: &str = "label-test-pw";

/// Whether the tests run in CI (`CI` set to `true` or `1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Orthanc's binary and the DICOMweb plugin, or `None` (outside CI only) when missing.
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
                 orthanc-dicomweb, see scripts/setup-system.sh): under CI=true the PACS \
                 tests must run, not skip"
            );
            eprintln!("skipping: Orthanc or orthanc-dicomweb is not installed");
            None
        }
    }
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Orthanc; killed (and its storage removed) when dropped, also on panic.
pub struct Orthanc {
    child: Option<Child>,
    bin: PathBuf,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Configuration, storage and log.
    pub dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

impl Orthanc {
    /// Starts Orthanc with DICOMweb at `/dicom-web/`, basic auth ([`USER`]/[`PASSWORD`]), the
    /// DICOM port disabled and storage in a temporary folder, and waits until it answers.
    /// `None` when Orthanc is not installed (outside CI).
    pub fn start() -> Option<Orthanc> {
        let (bin, plugin) = orthanc_install()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        let config = serde_json::json!({
            "Name": "ferrolabel-pacs-test",
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

    /// Starts Orthanc again on the same port and storage (after [`Orthanc::stop`]).
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
    }

    /// The DICOMweb root.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/dicom-web", self.port)
    }

    /// A GET of Orthanc's `path` with the test user.
    pub fn get(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .basic_auth(USER, Some(PASSWORD))
    }

    /// QIDO-RS series of `study` with `Modality=SEG` (their SeriesInstanceUIDs).
    pub fn seg_series(&self, study: &str) -> Vec<String> {
        let r = self
            .get(&format!("/dicom-web/studies/{study}/series?Modality=SEG"))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "QIDO: {}", r.status());
        let v: serde_json::Value = r.json().unwrap_or(serde_json::Value::Array(vec![]));
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["0020000E"]["Value"][0].as_str().map(String::from))
            .collect()
    }

    /// The instances of a series, WADO-RS (Part 10 bytes each).
    pub fn retrieve(&self, study: &str, series: &str) -> Vec<Vec<u8>> {
        let r = self
            .get(&format!("/dicom-web/studies/{study}/series/{series}"))
            .header(
                "Accept",
                "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
            )
            .send()
            .unwrap();
        assert!(r.status().is_success(), "WADO: {}", r.status());
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let boundary = common::boundary_of(&ct);
        let body = r.bytes().unwrap();
        common::parse_multipart(&body, &boundary)
            .into_iter()
            .map(|p| p.body)
            .collect()
    }

    /// Stores files with STOW-RS (one request).
    pub fn store(&self, study: &str, files: &[PathBuf]) {
        let boundary = "ferrolabel-pacs-test-boundary";
        let mut body = Vec::new();
        for f in files {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(&std::fs::read(f).unwrap());
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let r = self
            .http
            .post(format!(
                "http://127.0.0.1:{}/dicom-web/studies/{study}",
                self.port
            ))
            .basic_auth(USER, Some(PASSWORD))
            .header(
                "Content-Type",
                format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
            )
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

    /// Kills Orthanc now (the port then refuses connections); its storage stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
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

/// Identity of a written series.
#[derive(Debug, Clone)]
pub struct Written {
    /// StudyInstanceUID.
    pub study: String,
    /// SeriesInstanceUID.
    pub series: String,
    /// The files, one per slice.
    pub files: Vec<PathBuf>,
}

/// Writes a small axial series (`slices` slices of 12 rows × 16 columns, Explicit VR Little
/// Endian, int16 with slope 1 / intercept −1024) into `dir`, in `study`.
pub fn write_small_series(
    dir: &Path,
    study: &str,
    modality: &str,
    slices: usize,
    patient: &str,
    description: &str,
) -> Written {
    std::fs::create_dir_all(dir).unwrap();
    let series = new_uid();
    let frame_of_ref = new_uid();
    let (rows, cols) = (12usize, 16usize);
    let sop_class = if modality == "CT" {
        uids::CT_IMAGE_STORAGE
    } else {
        uids::MR_IMAGE_STORAGE
    };
    let mut files = Vec::new();
    for k in 0..slices {
        let sop = new_uid();
        let mut o = InMemDicomObject::new_empty();
        put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
        put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, sop_class);
        put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop);
        put_str(&mut o, tags::PATIENT_NAME, VR::PN, "Test^Web");
        put_str(&mut o, tags::PATIENT_ID, VR::LO, patient);
        put_str(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, study);
        put_str(&mut o, tags::STUDY_DATE, VR::DA, "20260101");
        put_str(&mut o, tags::STUDY_ID, VR::SH, "1");
        put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &series);
        put_str(&mut o, tags::SERIES_NUMBER, VR::IS, "2");
        put_str(&mut o, tags::SERIES_DESCRIPTION, VR::LO, description);
        put_str(&mut o, tags::MODALITY, VR::CS, modality);
        put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &(k + 1).to_string());
        put_str(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, &frame_of_ref);
        let z = format!("{}", -40.0 + 2.5 * k as f64);
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
        put_strs(&mut o, tags::PIXEL_SPACING, VR::DS, &["0.75", "0.8"]);
        put_str(&mut o, tags::SLICE_THICKNESS, VR::DS, "2.5");
        put_str(
            &mut o,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        o.put(DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(1u16),
        ));
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(rows as u16),
        ));
        o.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(cols as u16),
        ));
        o.put(DataElement::new(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(16u16),
        ));
        o.put(DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(16u16),
        ));
        o.put(DataElement::new(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(15u16),
        ));
        o.put(DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(1u16),
        ));
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
        let path = dir.join(format!("slice{k:03}.dcm"));
        file.write_to_file(&path).unwrap();
        files.push(path);
    }
    Written {
        study: study.into(),
        series,
        files,
    }
}

/// The shipped JPEG 2000 series (`data/totalseg/example_ct_dicom/`, blank UIDs) copied into
/// `dir` with StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID (from the file meta) and
/// PatientID filled, so that a PACS accepts it; pixel data is kept as it is (encapsulated).
pub fn shared_series_with_uids(dir: &Path) -> Written {
    std::fs::create_dir_all(dir).unwrap();
    let src = common::repo().join("data/totalseg/example_ct_dicom");
    let mut names: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let (study, series) = (new_uid(), new_uid());
    let mut files = Vec::new();
    for p in names {
        let mut f = dicom_object::open_file(&p).unwrap();
        let sop = f
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        put_str(&mut f, tags::STUDY_INSTANCE_UID, VR::UI, &study);
        put_str(&mut f, tags::SERIES_INSTANCE_UID, VR::UI, &series);
        put_str(&mut f, tags::SOP_INSTANCE_UID, VR::UI, &sop);
        put_str(&mut f, tags::PATIENT_ID, VR::LO, "FL-SHARED");
        put_str(&mut f, tags::SERIES_DESCRIPTION, VR::LO, "shared JPEG 2000");
        let out = dir.join(p.file_name().unwrap());
        f.write_to_file(&out).unwrap();
        files.push(out);
    }
    Written {
        study,
        series,
        files,
    }
}

/// A `ferrolabel` serving the PACS `orthanc` (basic auth, cache in a temporary folder, the
/// small test bundle), with `env` added.
pub struct PacsServer {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The DICOMweb cache folder (series/ and datastore/).
    pub cache: tempfile::TempDir,
    log: PathBuf,
    /// Blocking HTTP client.
    pub http: reqwest::blocking::Client,
}

impl PacsServer {
    /// Starts the server and waits until `/info/` answers.
    pub fn start(orthanc: &Orthanc, env: &[(&str, &str)]) -> PacsServer {
        let cache = tempfile::Builder::new()
            .prefix("ferrolabel-pacs-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = cache.path().join("server-stderr.txt");
        let mut cmd = Command::new(common::BIN);
        cmd.arg("start_server")
            .arg("--app")
            .arg(common::repo().join("apps/wholebody"))
            .arg("--studies")
            .arg(orthanc.base_url())
            .arg("--conf")
            .arg("bundle_dir")
            .arg(common::bundle_with_weights())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--threads",
                "1",
            ])
            .env("RUST_LOG", "info")
            .env("MONAI_LABEL_DICOMWEB_USERNAME", USER)
            .env("MONAI_LABEL_DICOMWEB_PASSWORD", PASSWORD)
            .env("MONAI_LABEL_DICOMWEB_CACHE_PATH", cache.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let mut s = PacsServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
            cache,
            log,
            http,
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("server exited with {status}: {}", s.stderr());
            }
            if s.http
                .get(s.url("/info/"))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "server not ready: {}",
                s.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET, returning status and JSON (`null` when the body is not JSON).
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for PacsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
