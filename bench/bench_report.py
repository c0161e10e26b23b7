"""Benchmark: the cost of the quantitative report that comes with every segmentation.

1. Starts `ferrolabel start_server` with seeded random weights of the real architecture and
   runs `/infer` on the shared CT (`--highres`, default false); the answer's
   `latencies.report` (the one-pass statistics) is compared with `latencies.total`.
2. Times the same statistics on a synthetic 512 x 512 x 400 CT and label map (a large
   whole-body scan) through `GET /datastore/label/report` (`seconds`: the computation only,
   not the file reading).

Prints the figures and writes bench-out/report.json.

Usage: bench_report.py [--threads N] [--highres true|false] [--out FILE]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import numpy as np
import nibabel as nib
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.join(REPO, "target", "release", "ferrolabel")
MODEL = "wholeBody_ct_segmentation"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--highres", default="false")
    ap.add_argument("--image", default=os.path.join(REPO, "data", "totalseg", "example_ct.nii.gz"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "report.json"))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="ferrolabel-bench-report-")
    bundle = os.path.join(tmp, "bundle")
    shutil.copytree(os.path.join(REPO, "apps", "wholebody", "model", MODEL, "configs"), os.path.join(bundle, "configs"))
    subprocess.run([BIN, "dev", "make-weights", "--bundle", bundle, "--seed", "1"], check=True, capture_output=True)
    studies = os.path.join(tmp, "studies")
    os.makedirs(os.path.join(studies, "labels", "final"))
    shutil.copy(args.image, os.path.join(studies, "ct.nii.gz"))

    # a large synthetic scan: 512 x 512 x 400 int16 HU at 0.8 x 0.8 x 1.25 mm, and a label map
    # with 104 structures (slabs), uncompressed so that reading stays cheap
    shape = (512, 512, 400)
    affine = np.diag([0.8, 0.8, 1.25, 1.0])
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=shape, dtype=np.int16)
    nib.save(nib.Nifti1Image(hu, affine), os.path.join(studies, "big.nii"))
    lab = (np.arange(shape[2], dtype=np.int64) * 105 // shape[2]).astype(np.uint8)
    lab = np.broadcast_to(lab, shape).copy()
    lab[:, :, :10] = 0
    nib.save(nib.Nifti1Image(lab, affine), os.path.join(studies, "labels", "final", "big.nii"))
    del hu, lab

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(tmp, "server.log"), "wb")
    proc = subprocess.Popen([BIN, "start_server", "--app", os.path.join(REPO, "apps", "wholebody"),
                             "--studies", studies, "--conf", "bundle_dir", bundle, "--port", str(port),
                             "--threads", str(args.threads), "--max-upload-mb", "4096"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/info/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        params = {"highres": args.highres.lower() == "true"}
        r = requests.post(f"{url}/infer/{MODEL}", params={"image": "ct", "output": "json"},
                          files={"params": (None, json.dumps(params))}, timeout=3600)
        r.raise_for_status()
        res = r.json()
        lat = res["latencies"]
        img = nib.load(args.image)
        infer = {
            "image": os.path.basename(args.image),
            "dims": list(img.shape),
            "highres": params["highres"],
            "threads": args.threads,
            "windows": res["windows"],
            "structures": len(res["report"]["structures"]),
            "report_s": lat["report"],
            "infer_total_s": lat["total"],
            "report_share_pct": 100.0 * lat["report"] / lat["total"],
        }
        r = requests.get(url + "/datastore/label/report", params={"label": "big", "tag": "final"}, timeout=3600)
        r.raise_for_status()
        big = r.json()
        large = {
            "dims": list(shape),
            "voxels": int(np.prod(shape)),
            "structures": len(big["structures"]),
            "report_s": big["seconds"],
            "ns_per_voxel": 1e9 * big["seconds"] / float(np.prod(shape)),
        }
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    out = {"infer": infer, "large": large}
    print(json.dumps(out, indent=2))
    print(f"report on {infer['image']} {infer['dims']}: {infer['report_s'] * 1000:.2f} ms = "
          f"{infer['report_share_pct']:.4f}% of the {infer['infer_total_s']:.1f} s infer")
    print(f"report on {large['dims']} ({large['structures']} structures): {large['report_s']:.3f} s "
          f"({large['ns_per_voxel']:.2f} ns/voxel)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
