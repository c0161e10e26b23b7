"""Writes the committed seed corpora under fuzz/seeds/<target>/.

NIfTI seeds are written by nibabel (an independent writer): every data type the reader
supports, both byte orders, scaling, header extensions, qform/sform variants, n+1 and ni1
magic. Multipart seeds are bodies exactly as `requests` (which the monailabel client uses)
encodes them, in the target's input layout. Params seeds are the params MONAI Label clients
send, plus edge cases. Run from the repository root with the project's Python:

    .venv/bin/python fuzz/make_seeds.py
"""

import gzip
import io
import json
import os
import sys

import nibabel as nib
import numpy as np
import requests

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def nifti_bytes(arr, affine, *, big_endian=False, slope=None, inter=None, ext=False,
                qform_only=False, sform_only=False, pair=False):
    img_cls = nib.Nifti1Pair if pair else nib.Nifti1Image
    img = img_cls(arr, affine, dtype=arr.dtype)
    h = img.header
    if big_endian:
        h = h.as_byteswapped(">")
        img = img_cls(arr, affine, header=h, dtype=arr.dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    if qform_only:
        img.set_sform(None, code=0)
        img.set_qform(affine, code=1)
    if sform_only:
        img.set_qform(None, code=0)
        img.set_sform(affine, code=2)
    if ext:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"ferrolabel seed comment"))
    bio = io.BytesIO()
    if pair:
        img.header.write_to(bio)
        return bio.getvalue() + np.asarray(arr).astype(img.get_data_dtype()).tobytes(order="F")
    fm = img.make_file_map({"image": bio, "header": bio})
    img.to_file_map(fm)
    return bio.getvalue()


def nifti_seeds():
    rng = np.random.default_rng(6)
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    aff[:3, 3] = [-10, 20, 5]
    oblique = np.array([[0.98, -0.17, 0, 3], [0.17, 0.98, 0, -4], [0, 0, 2.5, 1], [0, 0, 0, 1]])
    seeds = {}
    for dt in ["uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
               "float32", "float64"]:
        arr = (rng.integers(0, 100, size=(4, 3, 2))).astype(dt)
        seeds[f"{dt}.nii"] = nifti_bytes(arr, aff)
    arr = rng.integers(-1024, 2000, size=(5, 4, 3)).astype("int16")
    seeds["int16-be.nii"] = nifti_bytes(arr, aff, big_endian=True)
    seeds["uint16-slope.nii"] = nifti_bytes(arr.astype("uint16"), aff, slope=0.5, inter=-1024)
    seeds["float32-ext.nii"] = nifti_bytes(arr.astype("float32"), oblique, ext=True)
    seeds["qform-only.nii"] = nifti_bytes(arr, oblique, qform_only=True)
    seeds["sform-only.nii"] = nifti_bytes(arr, oblique, sform_only=True)
    seeds["one-voxel.nii"] = nifti_bytes(np.ones((1, 1, 1), "uint8"), np.eye(4))
    seeds["4d-t1.nii"] = nifti_bytes(np.ones((2, 2, 2, 1), "float32"), aff)
    seeds["2d.nii"] = nifti_bytes(np.ones((3, 2), "uint8"), aff)
    seeds["ni1-pair-header.nii"] = nifti_bytes(arr, aff, pair=True)
    nan = arr.astype("float32")
    nan[0, 0, 0] = np.nan
    nan[1, 0, 0] = np.inf
    seeds["float32-nonfinite.nii"] = nifti_bytes(nan, aff)
    return seeds


def multipart_seed(ct, body, chunk=0, limit=0):
    return bytes([chunk, limit]) + ct.encode() + b"\n" + body


def multipart_seeds():
    small = nifti_seeds()["uint8.nii"]
    out = {}

    def prepared(files=None, data=None):
        r = requests.Request("PUT", "http://x/datastore/label", files=files, data=data).prepare()
        return r.headers["Content-Type"], r.body

    ct, body = prepared(files={"label": ("C:\\Users\\me\\case.nii.gz", gzip.compress(small))},
                        data={"params": json.dumps({"label_info": [{"name": "liver", "idx": 5}]})})
    out["label-save"] = multipart_seed(ct, body)
    out["label-save-chunks-7"] = multipart_seed(ct, body, chunk=7)
    out["label-save-limit"] = multipart_seed(ct, body, limit=3)
    ct, body = prepared(files={"file": ("/home/u/scan.nii", small)},
                        data={"params": json.dumps({"highres": False})})
    out["infer-upload"] = multipart_seed(ct, body)
    ct, body = prepared(files=[("files", ("a.nrrd", b"NRRD0004\n")),
                               ("files", ("b.seg.nrrd", b"NRRD0004\n"))])
    out["session-files"] = multipart_seed(ct, body, chunk=1)
    ct, body = prepared(files={"file": (None, b"no filename")}, data={"params": "{}"})
    out["file-without-name"] = multipart_seed(ct, body)
    ct, body = prepared(files={"params": (None, "\u00e9\u4e2d".encode())})
    out["text-only"] = multipart_seed(ct, body)
    out["urlencoded"] = multipart_seed("application/x-www-form-urlencoded",
                                       b"params=%7B%22a%22%3A1%7D&x=y+z")
    out["empty-multipart"] = multipart_seed("multipart/form-data; boundary=b", b"--b--\r\n")
    out["torn"] = multipart_seed("multipart/form-data; boundary=b",
                                 b"--b\r\nContent-Disposition: form-data; name=\"label\"; "
                                 b"filename=\"x.nii\"\r\n\r\nabc")
    return out


def params_seeds():
    seeds = [
        "", "  ", "{}", '{"highres": false}', '{"highres": "TRUE", "sw_overlap": "0.5"}',
        '{"sw_batch_size": 4, "result_extension": ".seg.nrrd", "result_dtype": "uint8"}',
        '{"save_label": true, "label_tag": "original", "device": "cuda:0"}',
        '{"label_info": [{"name": "spleen", "idx": 1}, {"name": "liver", "idx": 5}]}',
        '{"client_id": "user-xyz", "strategy": "random"}',
        '{"a": 1e308, "b": -0.0, "c": 12345678901234567890, "d": 5e-324}',
        '{"s": "\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\"}', '{"k": {"n": [[[[[]]]]]}}',
        "[1, 2]", "null", "\"text\"", "{bad", '{"a":1}garbage', "../../etc/passwd",
        "case.001.nii.gz", "C:\\Users\\me\\x.nii.gz", ".hidden", "a..b", "final",
        "6f2c0b1e-9a8b-4c4d-9e0f-1a2b3c4d5e6f",
    ]
    return {f"{i:02}": s.encode() for i, s in enumerate(seeds)}


def main():
    for name, data in nifti_seeds().items():
        put("nifti", name, data)
        put("nifti", name + ".gz", gzip.compress(data, mtime=0))
        put("nifti_gz", name, bytes([0]) + data)
    put("nifti_gz", "truncated", bytes([1, 128]) + nifti_seeds()["int16.nii"])
    put("nifti_gz", "members", bytes([3]) + nifti_seeds()["float32.nii"])
    for name, data in multipart_seeds().items():
        put("multipart", name, data)
    for name, data in params_seeds().items():
        put("params", name, data)
    print(f"seeds written under {ROOT}", file=sys.stderr)


if __name__ == "__main__":
    main()
