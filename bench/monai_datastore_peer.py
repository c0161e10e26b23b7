"""The Python peer for bench_datastore.py: MONAI Label's own JSON datastore
(`monailabel.datastore.local.LocalDatastore`, monailabel 0.8.5) on a folder of images, in process
(no HTTP, so its figures are a lower bound for MONAI Label's server).

Usage: monai_datastore_peer.py STUDIES LABEL_FILE SAVES LISTINGS
Times: the first open (the folder scan that writes datastore_v2.json), a reopen, `listing`
(`json()`, what `GET /datastore/?output=all` answers, plus `json.dumps` of it, the least the server
does to send it), and `save_label` (copy + rewrite of datastore_v2.json under its file lock), each on
a different image. Prints one JSON line.
"""
import json
import logging
import os
import statistics
import sys
import time


def summary(times):
    ms = sorted(t * 1000 for t in times)
    return {"n": len(ms), "mean_ms": round(statistics.mean(ms), 3), "p50_ms": round(statistics.median(ms), 3),
            "max_ms": round(ms[-1], 3)}


def main():
    studies, label, saves, listings = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    logging.disable(logging.CRITICAL)  # its per-save info logs would otherwise go to stderr
    t0 = time.perf_counter()
    from monailabel.datastore.local import LocalDatastore
    import_s = time.perf_counter() - t0

    def open_ds():
        t = time.perf_counter()
        ds = LocalDatastore(studies, extensions=("*.nii.gz", "*.nii"), auto_reload=False)
        return ds, time.perf_counter() - t

    ds, first_open_s = open_ds()
    ds, reopen_s = open_ds()
    images = sorted(ds.list_images())
    listing, body = [], b""
    for _ in range(listings):
        t = time.perf_counter()
        body = json.dumps(ds.json()).encode()
        listing.append(time.perf_counter() - t)
    save = []
    for i in range(saves):
        t = time.perf_counter()
        ds.save_label(images[i % len(images)], label, "final", {"client_id": "bench"})
        save.append(time.perf_counter() - t)
    print(json.dumps({"images": len(images), "import_s": round(import_s, 3), "first_open_s": round(first_open_s, 3),
                      "reopen_s": round(reopen_s, 3), "listing": summary(listing), "listing_bytes": len(body),
                      "save": summary(save),
                      "json_bytes": os.path.getsize(os.path.join(studies, "datastore_v2.json"))}))


if __name__ == "__main__":
    main()
