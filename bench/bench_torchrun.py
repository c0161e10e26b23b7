"""Benchmark: distributed training through torchrun (1 and 2 gloo processes on the CPU) next to
ferrolabel's own trainer (the Rust worker), all started by one ferrolabel server through
`POST /train/wholeBody_ct_segmentation`, on the same data and the same small network.

Usage: bench_torchrun.py [--bin target/release/ferrolabel] [--epochs E] [--roi R]
                         [--init-filters F] [--threads T] [--out bench-out/torchrun.json]

Data: the shared 30-slice CT (data/totalseg/example_ct_sm.nii.gz) twice (two images), each
with its TotalSegmentator v2 reference mapped onto the bundle's labels as the `final` label:
every epoch trains on the same 2 random crops (batch 1 per process: 2 steps per epoch for one
process, 1 step per process for two). The network is the bundle's SegResNet with init_filters F
(8 unless told) from the same seeded weights, 3 mm (lowres), fp32, lr 1e-4, no held-out pair,
validation only after the last epoch (val_interval beyond the run). Threads: the server's
--threads T; torchrun gets T // processes per process (OMP_NUM_THREADS).

Measured per run:
- seconds per epoch: the median of the epochs' own times (train_stats history), the first
  epoch (warm-up) and the last (validation) left out;
- seconds per optimiser step (epoch time / steps per epoch of a process) and crops per second;
- peak RSS: the largest sum of VmRSS over every process the server started for the run (the
  Rust worker; torchrun's agent, its ranks), polled every 50 ms;
- wall time from POST to DONE (process start-up, imports, data preparation included).
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUNDLE = os.path.join(REPO, "apps", "wholebody", "model", "wholeBody_ct_segmentation")
MODEL = "wholeBody_ct_segmentation"


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"null")


def put_label(base, image, path):
    boundary = "ferrolabelbench"
    with open(path, "rb") as f:
        data = f.read()
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{}}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"label\"; filename=\"l.nii.gz\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    http("PUT", f"{base}/datastore/label?image={image}&tag=final", body,
         {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], list(children.get(root, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Peak(threading.Thread):
    """The largest sum of RSS over the server's descendants while running."""

    def __init__(self, server_pid):
        super().__init__(daemon=True)
        self.server_pid, self.peak, self.procs, self.stop = server_pid, 0.0, 0, False

    def run(self):
        while not self.stop:
            pids = descendants(self.server_pid)
            total = sum(rss_mib(p) for p in pids)
            if total > self.peak:
                self.peak, self.procs = total, len(pids)
            time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "ferrolabel"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--roi", type=int, default=64)
    ap.add_argument("--init-filters", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "torchrun.json"))
    a = ap.parse_args()
    py = os.environ.get("FERROLABEL_PYTHON", sys.executable)
    tmp = tempfile.mkdtemp(prefix="bench-torchrun-")
    try:
        bundle = os.path.join(tmp, "bundle")
        shutil.copytree(os.path.join(BUNDLE, "configs"), os.path.join(bundle, "configs"))
        inf = os.path.join(bundle, "configs", "inference.json")
        with open(inf) as f:
            cfg = json.load(f)
        cfg["network_def"]["init_filters"] = a.init_filters
        with open(inf, "w") as f:
            json.dump(cfg, f, indent=1)
        subprocess.run([a.bin, "dev", "make-weights", "--bundle", bundle, "--seed", "7"], check=True)
        seed_weights = os.path.join(tmp, "seed_lowres.pt")
        shutil.copy(os.path.join(bundle, "models", "model_lowres.pt"), seed_weights)
        studies = os.path.join(tmp, "studies")
        os.makedirs(studies)
        ct = os.path.join(REPO, "data", "totalseg", "example_ct_sm.nii.gz")
        for name in ("ct_a", "ct_b"):
            shutil.copy(ct, os.path.join(studies, f"{name}.nii.gz"))
        label = os.path.join(tmp, "seg_v1.nii.gz")
        subprocess.run([py, os.path.join(REPO, "tests", "reference", "train_reference.py"), "map-v2",
                        os.path.join(REPO, "data", "totalseg", "example_seg.nii.gz"),
                        os.path.join(REPO, "data", "totalseg", "totalseg_v2_classes.json"),
                        os.path.join(bundle, "configs", "metadata.json"), label], check=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(os.path.join(tmp, "server.log"), "w")
        server = subprocess.Popen(
            [a.bin, "start_server", "--app", os.path.join(REPO, "apps", "wholebody"),
             "--studies", studies, "--conf", "bundle_dir", bundle, "--conf", "python", py,
             "--host", "127.0.0.1", "--port", str(port), "--threads", str(a.threads)],
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            for _ in range(600):
                try:
                    http("GET", f"{base}/info/")
                    break
                except Exception:
                    time.sleep(0.2)
            for name in ("ct_a", "ct_b"):
                put_label(base, name, label)
            runs = [("rust", {}), ("torchrun_1", {"nproc_per_node": 1}),
                    ("torchrun_2", {"nproc_per_node": 2})]
            results = {}
            for name, extra in runs:
                shutil.copy(seed_weights, os.path.join(bundle, "models", "model_lowres.pt"))
                body = {"highres": False, "max_epochs": a.epochs, "val_interval": 10 ** 6,
                        "train_batch_size": 1, "roi_size": a.roi, "val_roi_size": a.roi,
                        "val_split": 0.0, "init_LR": 1e-4, "seed": 1, "amp": False}
                if extra:
                    body.update({"multi_gpu": True, "device": "cpu", "num_workers": 0, **extra})
                peak = Peak(server.pid)
                peak.start()
                t0 = time.perf_counter()
                http("POST", f"{base}/train/{MODEL}", json.dumps(body).encode(),
                     {"Content-Type": "application/json"})
                while True:
                    task = http("GET", f"{base}/train/")
                    if task["status"] != "RUNNING":
                        break
                    time.sleep(0.2)
                wall = time.perf_counter() - t0
                peak.stop = True
                peak.join()
                assert task["status"] == "DONE", task
                stats = http("GET", f"{base}/info/")["train_stats"][MODEL]
                epochs = [h["seconds"] for h in stats["history"]]
                steady = epochs[1:-1] or epochs
                per_epoch = statistics.median(steady)
                procs = extra.get("nproc_per_node", 1)
                steps = 2 // procs
                results[name] = {
                    "processes": procs,
                    "steps_per_epoch_per_process": steps,
                    "epoch_seconds": per_epoch,
                    "step_seconds": per_epoch / steps,
                    "crops_per_second": 2 / per_epoch,
                    "peak_rss_mib": round(peak.peak, 1),
                    "processes_at_peak": peak.procs,
                    "wall_seconds": round(wall, 2),
                    "epoch_seconds_all": [round(e, 3) for e in epochs],
                    "final_loss": stats["history"][-1]["loss"],
                }
                print(name, json.dumps(results[name]), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
        out = {
            "config": {"epochs": a.epochs, "roi": a.roi, "init_filters": a.init_filters,
                       "threads": a.threads, "images": 2, "batch_per_process": 1,
                       "resolution": "lowres (3 mm)", "device": "cpu"},
            "results": results,
            "ratios": {
                f"{k}_vs_rust": {
                    "epoch_seconds": results[k]["epoch_seconds"] / results["rust"]["epoch_seconds"],
                    "peak_rss": results[k]["peak_rss_mib"] / results["rust"]["peak_rss_mib"],
                } for k in ("torchrun_1", "torchrun_2")
            },
        }
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
        print(json.dumps(out["ratios"], indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
