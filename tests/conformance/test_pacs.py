"""A PACS as datastore, driven by the official monailabel client: Orthanc (Debian's `orthanc` +
`orthanc-dicomweb`) on loopback holds a small CT series (and an MR that is not an image);
ferrolabel serves it with `--studies http://127.0.0.1:PORT/dicom-web`; the client lists the
datastore, asks for the next sample, infers on it, and saves a `final` label (the inferred one,
edited as a user would); the SEG is then queried back from Orthanc with QIDO-RS
(Modality=SEG), retrieved with WADO-RS, and decoded with highdicom to the saved label's voxels.

Without Orthanc the test skips on a developer machine; under CI=true it fails.
"""
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from conftest import GOLDEN, Deployment, free_port

MODEL = "wholeBody_ct_segmentation"
USER, PASSWORD = "ferro", "conformance-pw"
ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

pytestmark = pytest.mark.ferrolabel_only


def in_ci():
    return os.environ.get("CI", "").lower() in ("true", "1")


def new_uid():
    return f"2.25.{uuid.uuid4().int}"


def write_series(modality, study, n=8, rows=40, cols=48):
    """A small axial series (int16, slope 1 / intercept -1024) as Part 10 bytes."""
    series, frame = new_uid(), new_uid()
    out = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        meta.MediaStorageSOPInstanceUID = new_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = "Conformance^Pacs", "FL-CONF"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "20260101", "1", 3, k + 1
        ds.Modality, ds.SeriesDescription = modality, f"small {modality}"
        ds.ImagePositionPatient = [-36.0, -30.0, -20.0 + 3.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.5, 1.5], 3.0
        ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        yy, xx = np.mgrid[0:rows, 0:cols]
        hu = np.where((xx - cols / 2) ** 2 + (yy - rows / 2) ** 2 < (rows / 3) ** 2, 1064, 0) + 5 * k
        ds.PixelData = hu.astype(np.int16).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, write_like_original=False)
        out.append(buf.getvalue())
    return series, out


class Orthanc:
    def __init__(self, tmp):
        self.port = free_port()
        storage = os.path.join(tmp, "orthanc-storage")
        config = {
            "Name": "ferrolabel-conformance", "StorageDirectory": storage, "IndexDirectory": storage,
            "StorageCompression": False, "Plugins": [PLUGIN], "HttpServerEnabled": True,
            "HttpPort": self.port, "HttpCompressionEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomServerEnabled": False, "OrthancExplorerEnabled": False, "WebDavEnabled": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": f"127.0.0.1:{self.port}", "Ssl": False},
        }
        cfg = os.path.join(tmp, "orthanc.json")
        with open(cfg, "w") as f:
            json.dump(config, f)
        self.log = open(os.path.join(tmp, "orthanc.log"), "wb")
        self.proc = subprocess.Popen([ORTHANC, cfg], stdout=self.log, stderr=subprocess.STDOUT)
        self.root = f"http://127.0.0.1:{self.port}/dicom-web"
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None, "Orthanc exited at start"
            try:
                self.request("GET", f"http://127.0.0.1:{self.port}/system")
                return
            except Exception:
                assert time.time() < deadline, "Orthanc did not start"
                time.sleep(0.1)

    def request(self, method, url, body=None, headers=None):
        import base64
        h = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
        h.update(headers or {})
        req = urllib.request.Request(url, data=body, headers=h, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.headers.get("Content-Type", ""), r.read()

    def stow(self, study, instances):
        boundary = "ferrolabel-conformance"
        body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + i + b"\r\n"
                        for i in instances) + b"--" + boundary.encode() + b"--\r\n"
        self.request("POST", f"{self.root}/studies/{study}", body, {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"})

    def qido(self, path):
        _, body = self.request("GET", f"{self.root}/{path}", headers={"Accept": "application/dicom+json"})
        return json.loads(body or b"[]")

    def wado_instances(self, study, series):
        ctype, body = self.request("GET", f"{self.root}/studies/{study}/series/{series}", headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        boundary = ctype.split("boundary=")[1].split(";")[0].strip('"').encode()
        parts = []
        for chunk in body.split(b"--" + boundary)[1:]:
            if chunk.startswith(b"--"):
                break
            head, _, data = chunk.partition(b"\r\n\r\n")
            parts.append(data[:-2] if data.endswith(b"\r\n") else data)
        return parts

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def pacs():
    if not (os.path.exists(ORTHANC) and os.path.exists(PLUGIN)):
        if in_ci():
            pytest.fail("Orthanc or orthanc-dicomweb is missing (scripts/setup-system.sh): under CI=true the "
                        "PACS conformance test must run")
        pytest.skip("Orthanc or orthanc-dicomweb is not installed")
    tmp = tempfile.mkdtemp(prefix="ferrolabel-pacs-conf-")
    orthanc = Orthanc(tmp)
    study = new_uid()
    ct, ct_files = write_series("CT", study)
    _, mr_files = write_series("MR", study, n=3)
    orthanc.stow(study, ct_files + mr_files)
    bundle = os.path.join(GOLDEN, "bundle_small")
    assert os.path.exists(os.path.join(bundle, "models", "model.pt")), f"golden bundle missing at {bundle}"
    env = dict(MONAI_LABEL_DICOMWEB_USERNAME=USER, MONAI_LABEL_DICOMWEB_PASSWORD=PASSWORD,
               MONAI_LABEL_DICOMWEB_CACHE_PATH=os.path.join(tmp, "cache"))
    # one server, or the team deployment of FERROLABEL_CLUSTER=1 (conftest.Deployment)
    deployment = Deployment(tmp, orthanc.root, bundle, env=env)
    url = deployment.url
    yield {"url": url, "orthanc": orthanc, "study": study, "ct": ct, "tmp": tmp}
    deployment.stop()
    orthanc.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def seg_to_labels(seg_bytes, source_files, names):
    """Decodes a SEG with highdicom onto the source series' grid as a NIfTI-ordered (x, y, z)
    array of label values (segment labels mapped through `names`: value -> name)."""
    import highdicom as hd
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_bytes)))
    sources = sorted((pydicom.dcmread(io.BytesIO(b)) for b in source_files),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    uids = [d.SOPInstanceUID for d in sources]
    by_name = {v: k for k, v in names.items()}
    out = np.zeros((len(uids), sources[0].Rows, sources[0].Columns), np.uint8)
    for desc in seg.SegmentSequence:
        value = by_name[desc.SegmentLabel]
        px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[desc.SegmentNumber],
                                               ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
        out[px[..., 0] > 0] = value
    return out.transpose(2, 1, 0)


def test_pacs_list_infer_save_final_seg_in_orthanc(pacs):
    from monailabel.client import MONAILabelClient
    client = MONAILabelClient(pacs["url"], tmpdir=tempfile.mkdtemp(dir=pacs["tmp"]), client_id="pacs-conformance")
    ds = client.datastore()
    assert set(ds["objects"]) == {pacs["ct"]}, "the CT series is the one image; the MR is not"
    sample = client.next_sample("random", {})
    assert sample["id"] == pacs["ct"]
    result, params = client.infer(MODEL, sample["id"], {"highres": False, "result_extension": ".nii.gz"})
    inferred = nib.load(result)
    labels = np.asarray(inferred.dataobj).astype(np.uint8)
    assert labels.shape == (48, 40, 8), "the result lies on the series' grid"
    # the user's edit: a spleen box and a liver box
    labels[5:15, 5:15, 2:6] = 1
    labels[30:40, 20:30, 4:8] = 5
    labels[labels > 5] = 0
    labels[(labels > 1) & (labels < 5)] = 0
    edited = os.path.join(pacs["tmp"], "edited.nii.gz")
    nib.save(nib.Nifti1Image(labels, inferred.affine), edited)
    names = {1: "spleen", 5: "liver"}
    r = client.save_label(sample["id"], edited, params={
        "label_info": [{"name": n, "idx": v} for v, n in names.items()], "model": MODEL})
    assert r["image"] == sample["id"] and r["label"] == sample["id"]

    orthanc, study = pacs["orthanc"], pacs["study"]
    deadline = time.time() + 60
    while True:
        segs = orthanc.qido(f"studies/{study}/series?Modality=SEG")
        if segs:
            break
        assert time.time() < deadline, "no SEG series reached Orthanc"
        time.sleep(0.5)
    assert len(segs) == 1
    seg_uid = segs[0]["0020000E"]["Value"][0]
    seg_files = orthanc.wado_instances(study, seg_uid)
    assert len(seg_files) == 1
    seg = pydicom.dcmread(io.BytesIO(seg_files[0]))
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pacs["ct"]
    decoded = seg_to_labels(seg_files[0], orthanc.wado_instances(study, pacs["ct"]), names)
    assert decoded.shape == labels.shape
    assert np.array_equal(decoded, labels), "the SEG in the PACS decodes to the saved label's voxels"
    # the label is kept locally as well, with its revision
    path = client.download_label(sample["id"], "final")
    assert np.array_equal(np.asarray(nib.load(path).dataobj).astype(np.uint8), labels)
