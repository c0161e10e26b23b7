"""Writes the committed seeds of the DICOM fuzz targets: fuzz/seeds/dicom_series/ and
fuzz/seeds/dicom_zip/.

dicom_series inputs are several files joined by the separator `%%FILE%%` (see
fuzz_targets/dicom_series.rs); dicom_zip inputs are zip archives. The files are small CT series
written by pydicom through dicom/tests/dicom_reference.py (8 x 8 pixels, 3 slices: explicit and
implicit VR, RLE, deflated, oblique with slope/intercept, Enhanced multi-frame, a missing slice,
no pixel data), 8 x 8 JPEG 2000 and JPEG baseline slices encoded by Pillow, and the first 8 KiB
of one file of the shipped JPEG 2000 series (data/totalseg/example_ct_dicom: a real scanner's
header). Run from the repository root with the project's Python:

    .venv/bin/python fuzz/make_dicom_seeds.py
"""

import glob
import io
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SEEDS = os.path.join(HERE, "seeds")
SEP = b"%%FILE%%"
REFERENCE = os.path.join(REPO, "dicom", "tests", "dicom_reference.py")


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def written(work, name, *args):
    out = os.path.join(work, name)
    subprocess.run([sys.executable, REFERENCE, "write-series", out, "--rows", "8", "--cols", "8",
                    "--slices", "3", *args], check=True)
    return [open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out, "*")))]


def codec_series(syntax):
    """Three 8 x 8 slices encoded by Pillow: JPEG 2000 lossless (16-bit) or JPEG baseline (8-bit)."""
    import pydicom
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, JPEG2000Lossless, JPEGBaseline8Bit, generate_uid
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(3):
        px = (np.arange(64).reshape(8, 8) * (k + 3)).astype(np.uint16)
        buf = io.BytesIO()
        if syntax == "j2k":
            Image.fromarray(px).save(buf, format="JPEG2000", irreversible=False, no_jp2=True)
            bits, ts = 16, JPEG2000Lossless
        else:
            Image.fromarray(px.astype(np.uint8)).save(buf, format="JPEG", quality=90)
            bits, ts = 8, JPEGBaseline8Bit
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [0, 0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ts
        ds.file_meta = meta
        ds.is_little_endian, ds.is_implicit_VR = True, False
        out = io.BytesIO()
        ds.save_as(out, write_like_original=False)
        files.append(out.getvalue())
    return files


def zip_of(files, names=None, method=zipfile.ZIP_DEFLATED, extra_dir=False):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        if extra_dir:
            z.writestr("CT/", b"")
        for i, data in enumerate(files):
            z.writestr((names or [f"CT/{i:03d}.dcm" for i in range(len(files))])[i], data)
    return buf.getvalue()


def main():
    with tempfile.TemporaryDirectory() as work:
        sets = {
            "explicit": written(work, "explicit"),
            "implicit-reverse": written(work, "implicit", "--syntax", "implicit", "--reverse"),
            "rle-oblique": written(work, "rle", "--syntax", "rle", "--angle", "25"),
            "deflate-rescale": written(work, "deflate", "--syntax", "deflate", "--slope", "0.5",
                                       "--intercept", "-1000.25"),
            "multiframe": written(work, "multi", "--multiframe", "--reverse"),
            "missing-slice": written(work, "missing", "--slices", "4", "--missing"),
            "no-pixels": written(work, "nopix", "--no-pixels"),
            "j2k": codec_series("j2k"),
            "jpeg-baseline": codec_series("jpeg"),
        }
        shipped = sorted(glob.glob(os.path.join(REPO, "data", "totalseg", "example_ct_dicom", "*")))
        for name, files in sets.items():
            put("dicom_series", name, SEP.join(files))
        # the first 8 KiB (fuzz.sh's -max_len): the scanner's header and the start of the pixels
        put("dicom_series", "shipped-j2k-slice", open(shipped[0], "rb").read()[:8192])
        put("dicom_zip", "explicit", zip_of(sets["explicit"], extra_dir=True))
        put("dicom_zip", "rle-stored", zip_of(sets["rle-oblique"], method=zipfile.ZIP_STORED))
        put("dicom_zip", "j2k", zip_of(sets["j2k"]))
        put("dicom_zip", "multiframe", zip_of(sets["multiframe"]))
        put("dicom_zip", "traversal", zip_of(sets["explicit"][:1], names=["../evil.dcm"]))
        put("dicom_zip", "with-text", zip_of(sets["explicit"] + [b"just text"]))


if __name__ == "__main__":
    main()
