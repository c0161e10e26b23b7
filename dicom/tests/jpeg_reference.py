"""Python side of ferrolabel-dicom's JPEG tests (dicom/tests/jpeg.rs).

The series are written by dicom_reference.py (16-bit signed CT, Explicit VR Little Endian); this
script narrows one to the bit depth a JPEG process takes, before dcmcjpeg compresses it:

  requantize DIR --bits 8|12   every file of DIR rewritten in place: stored values mapped linearly
                               (over the whole series) onto 0..2^bits-1, unsigned; 8 bits →
                               BitsAllocated 8 (JPEG baseline), 12 bits → BitsAllocated 16,
                               BitsStored 12 (JPEG extended)
"""

import argparse
import os

import numpy as np
import pydicom


def requantize(args):
    names = sorted(os.listdir(args.dir))
    datasets = [pydicom.dcmread(os.path.join(args.dir, n)) for n in names]
    arrays = [ds.pixel_array.astype(np.int64) for ds in datasets]
    lo = min(int(a.min()) for a in arrays)
    hi = max(int(a.max()) for a in arrays)
    top = (1 << args.bits) - 1
    for name, ds, a in zip(names, datasets, arrays):
        q = (a - lo) * top // max(hi - lo, 1)
        if args.bits == 8:
            ds.BitsAllocated = 8
            ds.PixelData = q.astype(np.uint8).tobytes()
            ds["PixelData"].VR = "OB"
        else:
            ds.BitsAllocated = 16
            ds.PixelData = q.astype(np.uint16).tobytes()
            ds["PixelData"].VR = "OW"
        ds.BitsStored = args.bits
        ds.HighBit = args.bits - 1
        ds.PixelRepresentation = 0
        ds.save_as(os.path.join(args.dir, name), write_like_original=False)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("requantize")
    r.add_argument("dir")
    r.add_argument("--bits", type=int, choices=[8, 12], required=True)
    args = p.parse_args()
    {"requantize": requantize}[args.command](args)


if __name__ == "__main__":
    main()
