"""The 3D Slicer call sequence (docs/protocol.md §12) and the server's own test list (§15) that
applies to this app, driven by the official monailabel client against a live server."""
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient  # noqa: F401
from monailabel.client.client import MONAILabelClientException

from conftest import BIN, PEER, REPO, SMALL_CT

MODEL = "wholeBody_ct_segmentation"


def raw(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    conn.close()
    return r.status, hdrs, data


def test_info(client):
    info = client.info()
    assert info["name"] and info["version"] and info["labels"]
    assert MODEL in info["models"]
    assert not info.get("config"), "a top-level config key makes Slicer refuse the server"
    m = info["models"][MODEL]
    assert m["type"] == "segmentation" and m["dimension"] == 3
    assert len(m["labels"]) == 104 and m["labels"]["spleen"] == 1 and m["labels"]["urinary_bladder"] == 104
    for k, v in m.get("config", {}).items():
        assert v != [], f"empty list in config {k} crashes Slicer"
    assert info["datastore"]["total"] == 2
    assert "random" in info["strategies"] and "first" in info["strategies"]


def test_auth_is_off(server):
    status, _, _ = raw(server, "GET", "/auth/")
    assert status == 404


def test_strategies(client):
    for s in ("first", "random"):
        sample = client.next_sample(s, {})
        assert sample["id"] in ("ct_small", "ct_other") and sample["name"].endswith(".nii.gz")
        assert sample["path"]


def test_datastore_listing_and_download(server, client):
    ds = client.datastore()
    assert set(ds["objects"]) == {"ct_small", "ct_other"}
    status, hdrs, body = raw(server, "GET", "/datastore/image?image=ct_small")
    assert status == 200
    assert 'filename="ct_small.nii.gz"' in hdrs["content-disposition"]
    assert body == open(SMALL_CT, "rb").read()
    status, _, body = raw(server, "GET", "/datastore/?output=stats")
    assert status == 200 and json.loads(body)["total"] >= 2
    status, _, body = raw(server, "GET", "/datastore/image/info?image=ct_small")
    assert status == 200 and json.loads(body)["name"] == "ct_small.nii.gz"


def load_labels(path):
    return np.asanyarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def cli_lowres(server):
    """ferrolabel infer (the CLI) on the same image with the same weights, lowres (None against
    the MONAI Label peer, whose lowres switch is not the bundle's)."""
    if PEER != "ferrolabel":
        return None
    out = os.path.join(tempfile.mkdtemp(), "cli.nii.gz")
    subprocess.run([BIN, "infer", "--bundle", server.bundle, "--image", SMALL_CT, "--output", out,
                    "--highres", "false", "--threads", "2"], check=True)
    return load_labels(out)


def test_infer_lowres_matches_cli_and_save_label_round_trip(server, client, cli_lowres):
    # Slicer: infer with the model config, params as a multipart form field
    result, params = client.infer(MODEL, "ct_small", {"highres": False, "result_extension": ".nii.gz",
                                                       "result_dtype": "uint8"})
    assert result and os.path.exists(result)
    params = params if isinstance(params, dict) else json.loads(params)
    assert params["label_names"]["spleen"] == 1 and "background" not in params["label_names"]
    assert "latencies" in params
    labels = load_labels(result)
    img = nib.load(SMALL_CT)
    assert labels.shape == img.shape
    if cli_lowres is not None:
        np.testing.assert_array_equal(labels, cli_lowres)

    # save it as the final label, as Slicer's "Submit Label" does
    r = client.save_label("ct_small", result, params={"label_info": [{"name": "spleen", "idx": 1}], "model": MODEL})
    assert r["image"] == "ct_small" and r["label"] == "ct_small"
    ds = client.datastore()
    assert "final" in ds["objects"]["ct_small"]["labels"]
    assert ds["objects"]["ct_small"]["labels"]["final"]["info"]["model"] == MODEL
    status, hdrs, body = raw(server, "GET", "/datastore/label?label=ct_small&tag=final")
    assert status == 200 and body == open(result, "rb").read()
    assert "filename=" in hdrs["content-disposition"]
    status, _, _ = raw(server, "HEAD", "/datastore/label?image=ct_small&tag=final")
    assert status == 200
    info = client.info()
    assert info["datastore"]["completed"] >= 1


def read_nrrd(path):
    """A minimal reader for what Slicer asks (attached header, raw or gzip, scalar 3-D): the
    voxels in NRRD's fastest-first order (the same as NIfTI's), the space and directions."""
    import gzip
    data = open(path, "rb").read()
    assert data.startswith(b"NRRD")
    head, _, payload = data.partition(b"\n\n")
    fields = {}
    for line in head.decode("ascii").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        k, _, v = line.partition(":")
        fields[k.strip()] = v.strip().lstrip("=").strip()
    sizes = [int(x) for x in fields["sizes"].split()]
    assert fields["dimension"] == "3" and len(sizes) == 3
    dtype = {"uint8": np.uint8, "unsigned char": np.uint8, "uchar": np.uint8}[fields["type"]]
    if fields["encoding"] == "gzip":
        payload = gzip.decompress(payload)
    else:
        assert fields["encoding"] == "raw", fields["encoding"]
    vox = np.frombuffer(payload, dtype=dtype)
    assert vox.size == int(np.prod(sizes)), (vox.size, sizes)
    return vox.reshape(sizes[::-1]).transpose(2, 1, 0), fields


def test_infer_highres_nrrd_as_slicer_asks(client):
    result, params = client.infer(MODEL, "ct_other", {"result_extension": ".nrrd", "result_dtype": "uint8"})
    assert result.endswith(".nrrd")
    labels, fields = read_nrrd(result)
    # the same request as NIfTI: the NRRD must hold the same voxels on the image's grid
    nii, _ = client.infer(MODEL, "ct_other", {"result_extension": ".nii.gz", "result_dtype": "uint8"})
    expected = load_labels(nii)
    assert labels.shape == nib.load(SMALL_CT).shape == expected.shape
    assert fields["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) > 1, "a constant label map would make this comparison trivial"


def test_session_upload_then_infer(client):
    s = client.create_session(SMALL_CT)
    sid = s["session_id"]
    assert sid and s["session_info"]
    got = client.get_session(sid)
    assert got["name"] == sid
    result, params = client.infer(MODEL, "not-in-datastore", {"highres": False}, session_id=sid)
    assert load_labels(result).shape == nib.load(SMALL_CT).shape
    client.remove_session(sid)
    with pytest.raises(MONAILabelClientException):
        client.get_session(sid)


def test_upload_image_through_put_datastore(server, client):
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "uploaded_case.nii.gz")
    shutil.copy(SMALL_CT, path)
    r = client.upload_image(path, "uploaded_case", {"note": "from the client"})
    assert r["image"] == "uploaded_case"
    ds = client.datastore()
    assert "uploaded_case" in ds["objects"]
    assert ds["objects"]["uploaded_case"]["image"]["info"]["note"] == "from the client"
    # upload without an id: the id comes from the file name, all suffixes removed
    status, _, body = raw(server, "PUT", "/datastore/", *multipart_file("file", "/some/client/dir/case.001.nii.gz",
                                                                       open(SMALL_CT, "rb").read()))
    assert status == 200, body
    assert json.loads(body)["image"] == "case"


def multipart_file(name, filename, data, params="{}"):
    b = "----------lImIt_of_THE_fIle_eW_$"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{params}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={b}", "Content-Length": str(len(body))}


def test_save_and_remove_label_with_tag(server, client):
    tmp = tempfile.mkdtemp()
    lab = np.zeros(nib.load(SMALL_CT).shape, np.uint8)
    lab[10:20, 10:20, 5:10] = 1
    path = os.path.join(tmp, "lab.nii.gz")
    nib.save(nib.Nifti1Image(lab, nib.load(SMALL_CT).affine), path)
    client.save_label("ct_other", path, tag="test")
    status, _, body = raw(server, "GET", "/datastore/?output=stats")
    assert json.loads(body)["label_tags"].get("test") == 1
    status, _, _ = raw(server, "DELETE", "/datastore/label?id=ct_other&tag=test")
    assert status == 200
    status, _, body = raw(server, "GET", "/datastore/?output=stats")
    assert "test" not in json.loads(body)["label_tags"]


def test_multipart_infer_response_wire_format(server):
    body = urllib.parse.urlencode({"params": json.dumps({"highres": False})})
    status, hdrs, data = raw(server, "POST", f"/infer/{MODEL}?image=ct_small", body,
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert "multipart" in hdrs["content-type"]
    assert "content-length" in hdrs and "transfer-encoding" not in hdrs
    boundary = hdrs["content-type"].split("boundary=")[1]
    parts = data.split(f"--{boundary}".encode())
    assert b'name="params"' in parts[1] and b"filename" not in parts[1].split(b"\r\n\r\n")[0]
    assert b'name="image"; filename="' in parts[2]
    status, hdrs, data = raw(server, "POST", f"/infer/{MODEL}?image=ct_small&output=json", body,
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and "label_names" in json.loads(data)


def test_model_and_logs(server):
    status, _, body = raw(server, "GET", f"/model/info/{MODEL}")
    assert status == 200 and json.loads(body)["checksum"].startswith("SHA256:")
    status, _, body = raw(server, "GET", f"/model/{MODEL}")
    assert status == 200 and len(body) > 1000
    status, _, _ = raw(server, "GET", "/logs/?lines=10&text=true")
    assert status == 200


def test_invalid_session(server):
    status, _, body = raw(server, "GET", "/session/xyz")
    assert status == 404, (status, body)


@pytest.mark.ferrolabel_only
def test_bad_input_gets_a_4xx_with_detail(server):
    cases = [
        ("POST", f"/infer/{MODEL}?image=ct_small&output=bogus", 422),
        ("POST", "/infer/no_such_model?image=ct_small", 404),
        ("POST", f"/infer/{MODEL}?image=no_such_image", 404),
        ("GET", "/datastore/image?image=..%2Fetc%2Fpasswd", None),
        ("GET", "/datastore/label?label=nope&tag=final", 404),
        ("GET", "/datastore/?output=bogus", 422),
    ]
    for method, path, want in cases:
        status, hdrs, body = raw(server, method, path, b"", {"Content-Length": "0"})
        assert 400 <= status < 500, (path, status, body)
        if want:
            assert status == want, (path, status, body)
        assert "detail" in json.loads(body), (path, body)
    body = urllib.parse.urlencode({"params": "{not json"})
    status, _, data = raw(server, "POST", f"/infer/{MODEL}?image=ct_small", body,
                          {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 422 and "detail" in json.loads(data)
    body, headers = multipart_file("file", "broken.nii.gz", b"\x1f\x8b garbage that is not gzip")
    status, _, data = raw(server, "PUT", "/datastore/?image=broken", body, headers)
    assert 400 <= status < 500 and "detail" in json.loads(data), (status, data)


def test_server_test_list_datastore_info_and_dataset(server):
    """docs/protocol.md §15 test_datastore 007-011 and 004."""
    status, _, body = raw(server, "GET", "/datastore/label/info?label=ct_small&tag=final")
    assert status == 200 and json.loads(body)["name"].startswith("ct_small")
    status, _, _ = raw(server, "PUT", "/datastore/image/info?image=ct_small", b"", {"Content-Length": "0"})
    assert status == 200
    status, _, body = raw(server, "GET", "/datastore/image/info?image=ct_small")
    assert json.loads(body)["name"] == "ct_small.nii.gz"
    form = urllib.parse.urlencode({"info": json.dumps({"reviewed": True})})
    status, _, _ = raw(server, "PUT", "/datastore/label/info?label=ct_small&tag=final", form,
                       {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    status, _, body = raw(server, "GET", "/datastore/label/info?label=ct_small&tag=final")
    assert json.loads(body)["reviewed"] is True
    status, hdrs, body = raw(server, "GET", "/datastore/dataset")
    assert status == 200 and body[:2] == b"PK"
    status, _, body = raw(server, "GET", "/datastore/?output=train")
    assert status == 200 and any(d["image"].endswith("ct_small.nii.gz") for d in json.loads(body))
    before = json.loads(raw(server, "GET", "/datastore/?output=stats")[2])["total"]
    status, _, _ = raw(server, "DELETE", "/datastore/?id=case")
    assert status == 200
    after = json.loads(raw(server, "GET", "/datastore/?output=stats")[2])["total"]
    assert after == before - 1


def test_server_test_list_sessions(server):
    """docs/protocol.md §15 test_session 002 and 007: update_ts, image download, several files."""
    import requests
    with open(SMALL_CT, "rb") as fh:
        r = requests.put(f"{server.url}/session/?expiry=600", files=[("files", ("ct.nii.gz", fh))],
                         data={"client_id": "conformance"})
    assert r.status_code == 200
    sid = r.json()["session_id"]
    first = requests.get(f"{server.url}/session/{sid}").json()["last_access_ts"]
    time.sleep(1.1)
    later = requests.get(f"{server.url}/session/{sid}?update_ts=true").json()["last_access_ts"]
    assert later > first
    img = requests.get(f"{server.url}/session/{sid}?image=true")
    assert img.status_code == 200 and img.headers["content-type"] == "application/octet-stream"
    assert requests.delete(f"{server.url}/session/{sid}").status_code == 200
    with open(SMALL_CT, "rb") as a, open(SMALL_CT, "rb") as b:
        r = requests.put(f"{server.url}/session/", files=[("files", ("a.nii.gz", a)), ("files", ("b.nii.gz", b))],
                         data={"client_id": "conformance"})
    assert r.status_code == 200
    assert requests.delete(f"{server.url}/session/{r.json()['session_id']}").status_code == 200
