"""Memory and time of the DICOMweb proxy (`/proxy/dicom/...`) on a ~100 MB series.

Starts a real Orthanc (Debian `orthanc` + `orthanc-dicomweb`, loopback, basic auth, temporary
storage) and the release binary with `--studies http://127.0.0.1:PORT/dicom-web`. Writes a CT
series with pydicom (`--slices` x 512 x 512 int16, Explicit VR Little Endian, ~0.5 MB a slice)
and loads it into Orthanc with its REST API. Then, over 127.0.0.1:
  * WADO-RS of the whole series (`multipart/related`), read 1 MiB at a time and discarded:
    through the proxy and straight from Orthanc (`--repeat` times each, best and median);
  * STOW-RS of a second series of the same size (a multipart file sent with its
    Content-Length): through the proxy and straight to Orthanc;
and the server's peak RSS (`VmHWM` of /proc/PID/status, reset with `clear_refs` before each
phase) against its resident size before, compared with the series size. Prints the figures and
writes JSON (`--out`).

A last WADO-RS download through the proxy reads at `--slow-mib-per-s` (25 MiB/s): the PACS is
far faster than that client, so only back-pressure keeps the server's memory flat.

Usage: bench_proxy.py [--slices 200] [--repeat 3] [--slow-mib-per-s 25] [--out bench-out/proxy.json]
"""
import argparse
import base64
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("FERROLABEL_BIN", os.path.join(REPO, "target", "release", "ferrolabel"))
ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "bench", "bench-proxy-pw"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
CHUNK = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_uid():
    return "2.25." + str(uuid.uuid4().int)


def write_series(folder, slices, study):
    """`slices` CT slices of 512 x 512 int16 in `folder`; returns (series UID, files, bytes)."""
    os.makedirs(folder, exist_ok=True)
    series = new_uid()
    rng = np.random.default_rng(7)
    files, total = [], 0
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = new_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = "Bench^Proxy", "FL-BENCH"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyDate, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "20260101", "1", 1, k + 1
        ds.Modality = "CT"
        ds.FrameOfReferenceUID = series + ".1"
        ds.ImagePositionPatient = [-192.0, -192.0, 1.25 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.75, 0.75], 1.25
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = rng.integers(-1024, 2000, size=(512, 512), dtype=np.int16).tobytes()
        path = os.path.join(folder, f"slice{k:04d}.dcm")
        ds.save_as(path, write_like_original=False)
        files.append(path)
        total += os.path.getsize(path)
    return series, files, total


def stow_file(files, path):
    """A multipart/related STOW-RS body of `files` written to `path`; returns its content type."""
    boundary = "bench-" + uuid.uuid4().hex
    with open(path, "wb") as out:
        for f in files:
            out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            with open(f, "rb") as src:
                shutil.copyfileobj(src, out)
            out.write(b"\r\n")
        out.write(f"--{boundary}--\r\n".encode())
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def download(port, path, headers, mib_per_s=None):
    """GET `path`, reading 1 MiB at a time (at most `mib_per_s` MiB/s when given); (status,
    bytes, seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    n = 0
    while True:
        b = r.read(CHUNK)
        if not b:
            break
        n += len(b)
        if mib_per_s:
            ahead = n / CHUNK / mib_per_s - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    dt = time.perf_counter() - t0
    conn.close()
    return r.status, n, dt


def upload(port, path, headers, body_path):
    """POST the file `body_path` with its Content-Length; (status, answer, seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=CHUNK)
    size = os.path.getsize(body_path)
    t0 = time.perf_counter()
    with open(body_path, "rb") as f:
        conn.request("POST", path, body=f, headers={**headers, "Content-Length": str(size)})
        r = conn.getresponse()
        data = r.read()
    dt = time.perf_counter() - t0
    conn.close()
    return r.status, data, dt


def proc_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def wait_http(port, path, headers, ok, proc, log, what):
    deadline = time.time() + 120
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path, headers=headers)
            st = conn.getresponse().status
            conn.close()
            if st in ok:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"{what} did not start: {open(log).read()[-2000:]}")
        time.sleep(0.2)


def timing(times):
    return {"best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3), "n": len(times)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slow-mib-per-s", type=float, default=25.0)
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "proxy.json"))
    a = ap.parse_args()
    if not (os.path.exists(ORTHANC) and os.path.exists(PLUGIN)):
        raise SystemExit("Orthanc and orthanc-dicomweb are needed (scripts/setup-system.sh)")
    tmp = tempfile.mkdtemp(prefix="ferrolabel-bench-proxy-")
    procs = []
    try:
        # Orthanc
        oport = free_port()
        storage = os.path.join(tmp, "orthanc")
        cfg = {
            "Name": "ferrolabel-bench", "StorageDirectory": storage, "IndexDirectory": storage,
            "StorageCompression": False, "Plugins": [PLUGIN], "HttpServerEnabled": True,
            "HttpPort": oport, "HttpCompressionEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomServerEnabled": False, "OrthancExplorerEnabled": False, "WebDavEnabled": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": f"127.0.0.1:{oport}", "Ssl": False},
        }
        with open(os.path.join(tmp, "orthanc.json"), "w") as f:
            json.dump(cfg, f)
        olog = os.path.join(tmp, "orthanc.log")
        orthanc = subprocess.Popen([ORTHANC, os.path.join(tmp, "orthanc.json")],
                                   stdout=open(olog, "wb"), stderr=subprocess.STDOUT)
        procs.append(orthanc)
        wait_http(oport, "/system", AUTH, {200}, orthanc, olog, "Orthanc")

        # the series: one loaded with Orthanc's REST API, two more for STOW
        study = new_uid()
        t0 = time.perf_counter()
        series, files, size = write_series(os.path.join(tmp, "s1"), a.slices, study)
        _, files2, size2 = write_series(os.path.join(tmp, "s2"), a.slices, study)
        _, files3, _ = write_series(os.path.join(tmp, "s3"), a.slices, study)
        write_s = time.perf_counter() - t0
        for p in files:
            conn = http.client.HTTPConnection("127.0.0.1", oport, timeout=120)
            with open(p, "rb") as f:
                conn.request("POST", "/instances", body=f.read(), headers=AUTH)
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
            conn.close()
        ct2 = stow_file(files2, os.path.join(tmp, "stow2.bin"))
        ct3 = stow_file(files3, os.path.join(tmp, "stow3.bin"))

        # the server
        port = free_port()
        slog = os.path.join(tmp, "server.log")
        server = subprocess.Popen(
            [BIN, "start_server", "--app", os.path.join(REPO, "apps", "wholebody"),
             "--studies", f"http://127.0.0.1:{oport}/dicom-web",
             "--dicomweb-username", USER, "--dicomweb-password", PASSWORD,
             "--dicomweb-cache-path", os.path.join(tmp, "cache"),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=open(slog, "wb"), stderr=subprocess.STDOUT)
        procs.append(server)
        wait_http(port, "/info/", {}, {200}, server, slog, "ferrolabel")
        pid = server.pid
        # warm up: one small proxied request (the HTTP client, the connection pool)
        st, _, _ = download(port, "/proxy/dicom/qido/studies", {})
        assert st == 200, st
        time.sleep(1)
        rss_before = proc_kib(pid, "VmRSS")

        wado = f"/studies/{study}/series/{series}"
        accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        reset_peak(pid)
        via, direct = [], []
        nbytes = None
        for _ in range(a.repeat):
            st, n, dt = download(port, "/proxy/dicom/wado" + wado, accept)
            assert st == 200 and n > size, (st, n)
            via.append(dt)
            st, n2, dt = download(oport, "/dicom-web" + wado, {**accept, **AUTH})
            assert st == 200 and n2 == n, (st, n2, n)
            direct.append(dt)
            nbytes = n
        wado_peak = proc_kib(pid, "VmHWM")
        # a slow client: Orthanc is far faster, so the proxy must hold back, not buffer
        reset_peak(pid)
        st, n, slow_s = download(port, "/proxy/dicom/wado" + wado, accept, a.slow_mib_per_s)
        assert st == 200 and n == nbytes, (st, n)
        slow_peak = proc_kib(pid, "VmHWM")

        reset_peak(pid)
        st, data, stow_via = upload(port, "/proxy/dicom/stow/studies", {"Content-Type": ct2}, os.path.join(tmp, "stow2.bin"))
        assert st == 200, (st, data[:500])
        stow_peak = proc_kib(pid, "VmHWM")
        stored = json.loads(data)["00081199"]["Value"]
        assert len(stored) == a.slices, len(stored)
        st, data, stow_direct = upload(oport, "/dicom-web/studies", {"Content-Type": ct3, **AUTH}, os.path.join(tmp, "stow3.bin"))
        assert st == 200, (st, data[:500])

        mib = 1 << 20
        res = {
            "series": {"slices": a.slices, "rows": 512, "columns": 512, "files_bytes": size,
                       "wado_answer_bytes": nbytes, "stow_body_bytes": os.path.getsize(os.path.join(tmp, "stow2.bin")),
                       "write_s": round(write_s, 1)},
            "server_rss_before_mib": round(rss_before / 1024, 1),
            "wado": {"via_proxy": timing(via), "direct": timing(direct),
                     "proxy_over_direct_best": round(min(via) / min(direct), 2),
                     "peak_rss_mib": round(wado_peak / 1024, 1),
                     "peak_growth_mib": round((wado_peak - rss_before) / 1024, 1),
                     "peak_growth_over_series": round((wado_peak - rss_before) * 1024 / nbytes, 4),
                     "slow_client": {"mib_per_s": a.slow_mib_per_s, "seconds": round(slow_s, 2),
                                     "peak_rss_mib": round(slow_peak / 1024, 1),
                                     "peak_growth_mib": round((slow_peak - rss_before) / 1024, 1)}},
            "stow": {"via_proxy_s": round(stow_via, 3), "direct_s": round(stow_direct, 3),
                     "peak_rss_mib": round(stow_peak / 1024, 1),
                     "peak_growth_mib": round((stow_peak - rss_before) / 1024, 1),
                     "peak_growth_over_series": round((stow_peak - rss_before) * 1024 / size2, 4)},
        }
        print(f"series: {a.slices} x 512 x 512 int16, {size / mib:.1f} MiB of files, "
              f"WADO answer {nbytes / mib:.1f} MiB")
        print(f"server RSS before: {rss_before / 1024:.1f} MiB")
        w = res["wado"]
        print(f"WADO via proxy: best {w['via_proxy']['best_s']} s, median {w['via_proxy']['median_s']} s; "
              f"direct: best {w['direct']['best_s']} s, median {w['direct']['median_s']} s "
              f"(x{w['proxy_over_direct_best']})")
        print(f"WADO peak RSS {w['peak_rss_mib']} MiB: +{w['peak_growth_mib']} MiB "
              f"= {w['peak_growth_over_series']:.3f} x the series")
        sc = w["slow_client"]
        print(f"WADO via proxy to a client reading {sc['mib_per_s']} MiB/s: {sc['seconds']} s, "
              f"peak RSS {sc['peak_rss_mib']} MiB: +{sc['peak_growth_mib']} MiB")
        s_ = res["stow"]
        print(f"STOW via proxy {s_['via_proxy_s']} s, direct {s_['direct_s']} s; peak RSS {s_['peak_rss_mib']} MiB: "
              f"+{s_['peak_growth_mib']} MiB = {s_['peak_growth_over_series']:.3f} x the series")
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {a.out}")
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
