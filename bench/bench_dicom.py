"""DICOM benchmark, both sides in one run (docs/dicom.md "Uploading a series / limits / benchmark").

(a) Series assembly: the repo's 3 mm CT (data/totalseg/example_ct.nii.gz, 122x101x112) is resampled
    (nearest neighbour) onto a 512x512x400 grid and written with pydicom as 400 CT files (int16,
    explicit VR little endian, slope 1, intercept -1024) into a temp folder. Then, each in a fresh
    subprocess so that peak RSS (VmHWM from /proc/self/status) is its own:
      * ferrolabel: `dicom_bench assemble DIR` (dicom/examples/dicom_bench.rs: assemble_dir, f32),
      * SimpleITK: GetGDCMSeriesFileNames + ImageSeriesReader.Execute (GDCM, int16 here).
    Printed: times, peak RSS, the ratios ferrolabel / SimpleITK (time) and peak RSS / volume size
    (the volume being ferrolabel's f32 volume, 419 MB).
(b) SEG writing: a 104-structure label map on that grid (16 structures per slice: a 4x4 in-plane
    grid inside the body, changing every 40 slices; the bundle's 104 names) written as a BINARY SEG
    by ferrolabel (`dicom_bench seg`) and by highdicom's Segmentation (BINARY, no compression,
    empty frames omitted, given the label map itself), and as a LABELMAP SEG by ferrolabel
    (highdicom 0.22 has no LABELMAP);
    printed: time ratio and file sizes. highdicom takes minutes.

Writes bench-out/dicom.json. Not part of CI. Build first:
  cargo build --release -p ferrolabel-dicom --example dicom_bench
Usage: bench_dicom.py [--slices 400] [--skip-seg] [--runs 3] [--out bench-out/dicom.json]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCH_BIN = os.environ.get(
    "FERROLABEL_DICOM_BENCH", os.path.join(REPO, "target", "release", "examples", "dicom_bench"))
CT = os.path.join(REPO, "data", "totalseg", "example_ct.nii.gz")
METADATA = os.path.join(REPO, "apps", "wholebody", "model", "wholeBody_ct_segmentation", "configs",
                        "metadata.json")

SITK_READ = r"""
import json, sys, time
import SimpleITK as sitk
t0 = time.perf_counter()
r = sitk.ImageSeriesReader()
r.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(sys.argv[1]))
img = r.Execute()
dt = time.perf_counter() - t0
arr = sitk.GetArrayViewFromImage(img)
hwm = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1]) * 1024
print(json.dumps({"seconds": dt, "vm_hwm_bytes": hwm, "dims": list(img.GetSize()),
                  "pixel_type": img.GetPixelIDTypeAsString(), "sum": float(arr.sum(dtype="float64"))}))
"""

HIGHDICOM_SEG = r"""
import glob, json, sys, time
import numpy as np
import pydicom
import highdicom as hd
from pydicom.sr.codedict import codes
src_dir, labels_path, names_path, out = sys.argv[1:5]
names = json.load(open(names_path))
sources = [pydicom.dcmread(p) for p in sorted(glob.glob(src_dir + "/*.dcm"))]
sources.sort(key=lambda d: float(d.ImagePositionPatient[2]))
rows, cols = sources[0].Rows, sources[0].Columns
lab = np.fromfile(labels_path, dtype=np.uint8).reshape(len(sources), rows, cols)
t0 = time.perf_counter()
# a label map (values = segment numbers): highdicom splits it per segment itself
present = list(range(1, len(names) + 1))
algo = hd.AlgorithmIdentificationSequence(
    name="bench", version="1", family=codes.cid7162.ArtificialIntelligence)
descs = [hd.seg.SegmentDescription(
    segment_number=i + 1, segment_label=names[v - 1][:64],
    segmented_property_category=codes.cid7150.Tissue, segmented_property_type=codes.cid7166.ConnectiveTissue,
    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo)
    for i, v in enumerate(present)]
seg = hd.seg.Segmentation(
    source_images=sources, pixel_array=lab, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
    segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=99,
    sop_instance_uid=hd.UID(), instance_number=1, manufacturer="bench",
    manufacturer_model_name="bench", software_versions="1", device_serial_number="1",
    omit_empty_frames=True)
seg.save_as(out)
dt = time.perf_counter() - t0
import os
print(json.dumps({"seconds": dt, "bytes": os.path.getsize(out), "frames": int(seg.NumberOfFrames)}))
"""


def resampled_ct(shape):
    """The repo's CT on a 512x512xN grid (nearest neighbour), int16 HU, as (z, y, x)."""
    import nibabel as nib
    ct = np.asanyarray(nib.load(CT).dataobj).astype(np.int16)  # (x, y, z)
    nx, ny, nz = shape
    xi = (np.arange(nx) * ct.shape[0] / nx).astype(int)
    yi = (np.arange(ny) * ct.shape[1] / ny).astype(int)
    zi = (np.arange(nz) * ct.shape[2] / nz).astype(int)
    vol = ct[np.ix_(xi, yi, zi)]  # (x, y, z)
    return np.ascontiguousarray(vol.transpose(2, 1, 0))  # (z, y, x): slice, row, column


def write_series(vol, out_dir):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    nz, ny, nx = vol.shape
    spacing_xy, spacing_z = 0.8, 1.0
    stored = (vol.astype(np.int32) + 1024).clip(-32768, 32767).astype(np.int16)
    order = np.random.default_rng(0).permutation(nz)  # file names in no particular order
    for n, k in enumerate(order):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Bench^Dicom"
        ds.PatientID = "BENCH-1"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate, ds.StudyTime = "20260101", "120000"
        ds.StudyID, ds.AccessionNumber = "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = 1
        ds.Manufacturer = "bench"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.Modality = "CT"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [-204.8, -204.8, float(k) * spacing_z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing_xy, spacing_xy]
        ds.SliceThickness = spacing_z
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(os.path.join(out_dir, f"f{n:05d}.dcm"), write_like_original=False)


def label_map(vol):
    """104 structures, 16 per slice (4x4 in-plane cells in the body, new set every 40 slices)."""
    nz, ny, nx = vol.shape
    z = np.arange(nz)[:, None, None] // 40
    y = np.arange(ny)[None, :, None] * 4 // ny
    x = np.arange(nx)[None, None, :] * 4 // nx
    lab = (1 + (z * 16 + y * 4 + x) % 104).astype(np.uint8)
    lab[vol < -300] = 0
    return lab  # (z, y, x) = x fastest


def run_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench_dicom: {os.path.basename(cmd[0])} {cmd[1] if len(cmd) > 1 and len(cmd[1]) < 40 else ''} "
                 f"failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-seg", action="store_true")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out", "dicom.json"))
    args = ap.parse_args()
    if not os.path.exists(BENCH_BIN):
        sys.exit(f"bench_dicom: {BENCH_BIN} missing: cargo build --release -p ferrolabel-dicom "
                 "--example dicom_bench")
    py = sys.executable
    work = tempfile.mkdtemp(prefix="bench-dicom-")
    result = {"grid": [512, 512, args.slices]}
    try:
        series = os.path.join(work, "series")
        os.makedirs(series)
        t0 = time.perf_counter()
        vol = resampled_ct((512, 512, args.slices))
        write_series(vol, series)
        print(f"wrote {args.slices} files in {time.perf_counter() - t0:.1f} s", flush=True)
        volume_bytes = 512 * 512 * args.slices * 4
        result["volume_f32_bytes"] = volume_bytes
        # (a) assembly, alternating sides; both read the same (page-cached) files
        ours, sitk = [], []
        for _ in range(args.runs):
            ours.append(run_json([BENCH_BIN, "assemble", series]))
            sitk.append(run_json([py, "-c", SITK_READ, series]))
        expected = float((vol.astype(np.float64)).sum())
        for r in ours + sitk:
            assert abs(r["sum"] - expected) < 1e-6 * abs(expected) + 1, (r["sum"], expected)
        t_ours = statistics.median(r["seconds"] for r in ours)
        t_sitk = statistics.median(r["seconds"] for r in sitk)
        rss_ours = max(r["vm_hwm_bytes"] for r in ours)
        rss_sitk = max(r["vm_hwm_bytes"] for r in sitk)
        result["assemble"] = {
            "runs": args.runs,
            "ferrolabel": {"seconds_median": t_ours, "peak_rss_bytes": rss_ours, "all": ours},
            "simpleitk": {"seconds_median": t_sitk, "peak_rss_bytes": rss_sitk,
                          "pixel_type": sitk[0]["pixel_type"], "all": sitk},
            "time_ratio": t_ours / t_sitk,
            "ferrolabel_rss_over_volume": rss_ours / volume_bytes,
            "simpleitk_rss_over_volume": rss_sitk / volume_bytes,
        }
        print(f"assemble 512x512x{args.slices}: ferrolabel {t_ours:.3f} s, peak RSS "
              f"{rss_ours / 2**20:.0f} MiB; SimpleITK {t_sitk:.3f} s, peak RSS {rss_sitk / 2**20:.0f} MiB "
              f"({sitk[0]['pixel_type']})")
        print(f"  time ratio ferrolabel/SimpleITK {t_ours / t_sitk:.2f} (target <= 1.0); "
              f"peak RSS / f32 volume {rss_ours / volume_bytes:.2f} (target <= 1.5)", flush=True)
        if not args.skip_seg:
            names = json.load(open(METADATA))["network_data_format"]["outputs"]["pred"]["channel_def"]
            names = [names[str(v)] for v in range(1, 105)]
            names_path = os.path.join(work, "names.json")
            json.dump(names, open(names_path, "w"))
            labels_path = os.path.join(work, "labels.u8")
            label_map(vol).tofile(labels_path)
            del vol
            r_ours = run_json([BENCH_BIN, "seg", series, labels_path, names_path, work])
            for kind in ("binary", "labelmap"):
                print(f"SEG ferrolabel {kind.upper()}: {r_ours[kind]['seconds']:.2f} s, "
                      f"{r_ours[kind]['bytes'] / 2**20:.1f} MiB", flush=True)
            r_hd = run_json([py, "-c", HIGHDICOM_SEG, series, labels_path, names_path,
                             os.path.join(work, "highdicom.dcm")])
            print(f"SEG highdicom BINARY: {r_hd['seconds']:.2f} s, {r_hd['bytes'] / 2**20:.1f} MiB, "
                  f"{r_hd['frames']} frames")
            ratio = r_ours["binary"]["seconds"] / r_hd["seconds"]
            print(f"  time ratio ferrolabel/highdicom {ratio:.3f} (target <= 0.2)")
            result["seg"] = {"ferrolabel": r_ours, "highdicom": r_hd, "time_ratio_binary": ratio}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
