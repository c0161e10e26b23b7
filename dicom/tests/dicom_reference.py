"""Python side of ferrolabel-dicom's tests: writes DICOM series with pydicom and reads series and
SEGs with independent readers (SimpleITK's ImageSeriesReader, highdicom, pydicom).

Commands (all write their results as files the Rust tests read):
  write-series OUT_DIR [options]   a synthetic CT series, one file per slice (or one Enhanced CT)
  sitk-read DIR OUT_PREFIX         OUT_PREFIX.f32 (voxels, x fastest) + OUT_PREFIX.json (dims, RAS affine)
  seg-read SEG SOURCE_DIR NAMES_JSON OUT_PREFIX
                                   the SEG decoded twice (highdicom and plain pydicom), checked to
                                   agree, as OUT_PREFIX.u8 on the source grid (x fastest)
  hd-write-seg SOURCE_DIR LABELS_U8 SPEC_JSON OUT
                                   a BINARY SEG written by highdicom (segments as SPEC_JSON lists)
  as-binary-class SEG OUT          a LABELMAP SEG relabelled with the BINARY SOP class (for
                                   validators that predate Supplement 243)
"""

import argparse
import json
import os
import sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "fake-jpegls": "fake-jpegls",
}


def rotation(axis, degrees):
    axis = np.asarray(axis, float)
    axis /= np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def ds_str(v):
    s = f"{v:.10g}"
    return s if len(s) <= 16 else f"{v:.8g}"


def base_dataset(args, study, series, frame_of_ref):
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Test^Ferro"
    ds.PatientID = "FL-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 3
    ds.Modality = args.modality
    ds.FrameOfReferenceUID = frame_of_ref
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "pydicom test writer"
    ds.Rows = args.rows
    ds.Columns = args.cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def write_series(args):
    rng = np.random.default_rng(args.seed)
    nz, ny, nx = args.slices, args.rows, args.cols
    # smooth-ish structure plus noise, stored values in int16
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx]
    stored = (400 * np.sin(x / 5.0) * np.cos(y / 7.0) + 30 * z + rng.integers(-50, 50, (nz, ny, nx)))
    stored = stored.astype(np.int16)
    rot = rotation(args.axis, args.angle) if args.angle else np.eye(3)
    row_dir, col_dir = rot[:, 0], rot[:, 1]
    normal = np.cross(row_dir, col_dir)
    spacing = (0.8, 0.7)  # between rows, between columns
    origin = np.array([-120.5, 33.25, 410.0])
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    positions = []
    for k in range(nz):
        step = args.spacing * k
        if args.missing and k >= nz // 2:
            step += args.spacing
        if args.duplicate and k == nz - 1:
            step = args.spacing * (k - 1)
        p = origin + normal * step
        if args.tilt:
            p = p + col_dir * step * np.tan(np.radians(args.tilt))
        positions.append(p)
    os.makedirs(args.out, exist_ok=True)
    iop = [ds_str(v) for v in list(row_dir) + list(col_dir)]
    if args.multiframe:
        write_enhanced(args, stored, positions, iop, spacing, study, series, frame_of_ref)
        return
    order = list(range(nz))
    if args.reverse:
        order.reverse()
    for n, k in enumerate(order):
        ds = base_dataset(args, study, series, frame_of_ref)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [ds_str(v) for v in positions[k]]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [ds_str(spacing[0]), ds_str(spacing[1])]
        ds.SliceThickness = ds_str(args.spacing)
        ds.RescaleIntercept = ds_str(args.intercept)
        ds.RescaleSlope = ds_str(args.slope)
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        syntax = SYNTAXES[args.syntax]
        if syntax == RLELossless:
            ds.compress(RLELossless)
        elif syntax == ImplicitVRLittleEndian:
            meta.TransferSyntaxUID = syntax
            ds.is_implicit_VR = True
        elif syntax == DeflatedExplicitVRLittleEndian:
            meta.TransferSyntaxUID = syntax
        elif syntax == "fake-jpegls":
            # declared JPEG-LS (not decodable without CharLS); the payload is never reached
            from pydicom.encaps import encapsulate

            meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7not-really-jpeg-ls\xff\xd9"])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        if args.no_pixels:
            del ds.PixelData
        ds.save_as(os.path.join(args.out, f"im{n:04d}.dcm"), write_like_original=False)


def write_enhanced(args, stored, positions, iop, spacing, study, series, frame_of_ref):
    ds = base_dataset(args, study, series, frame_of_ref)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(positions)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [ds_str(spacing[0]), ds_str(spacing[1])]
    measures.SliceThickness = ds_str(args.spacing)
    orient = Dataset()
    orient.ImageOrientationPatient = iop
    trans = Dataset()
    trans.RescaleIntercept = ds_str(args.intercept)
    trans.RescaleSlope = ds_str(args.slope)
    trans.RescaleType = "HU"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([trans])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    order = list(range(len(positions)))
    if args.reverse:
        order.reverse()
    frames = []
    for k in order:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [ds_str(v) for v in positions[k]]
        item.PlanePositionSequence = Sequence([pos])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([stored[k] for k in order]).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.save_as(os.path.join(args.out, "enhanced.dcm"), write_like_original=False)


def lps_to_ras_affine(image):
    import SimpleITK as sitk  # noqa: F401

    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def sitk_read(args):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(args.dir)
    if not names:
        sys.exit(f"SimpleITK found no series in {args.dir}")
    reader.SetFileNames(names)
    image = reader.Execute()
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)  # [z, y, x]
    voxels.tofile(args.out + ".f32")
    meta = {"dims": list(image.GetSize()), "affine": lps_to_ras_affine(image).tolist()}
    with open(args.out + ".json", "w") as f:
        json.dump(meta, f)


def seg_read(args):
    import highdicom as hd

    seg_ds = pydicom.dcmread(args.seg)
    names = json.load(open(args.names))  # {segment label: label value}
    sources = [pydicom.dcmread(os.path.join(args.source, f), stop_before_pixels=True)
               for f in sorted(os.listdir(args.source))]
    normal = np.cross(np.array(sources[0].ImageOrientationPatient[:3], float),
                      np.array(sources[0].ImageOrientationPatient[3:], float))
    sources.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    # anonymised sources may blank SOPInstanceUID: the file meta keeps it
    uids = [d.SOPInstanceUID or d.file_meta.MediaStorageSOPInstanceUID for d in sources]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)

    if seg_ds.SegmentationType == "LABELMAP":
        return labelmap_read(args, seg_ds, sources, uids, names, rows, cols)

    # 1. highdicom: segments combined into one array per source instance
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    number_to_value = {}
    for s in seg_ds.SegmentSequence:
        number_to_value[int(s.SegmentNumber)] = int(names[s.SegmentLabel])
    present = [u for u in uids if u in set(seg.get_source_image_uids()[i][2]
                                           for i in range(len(seg.get_source_image_uids())))]
    by_hd = np.zeros((len(uids), rows, cols), np.uint8)
    if present:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=present, combine_segments=True, relabel=False)
        for u, plane in zip(present, pixels):
            k = uids.index(u)
            for number, value in number_to_value.items():
                by_hd[k][plane == number] = value

    # 2. plain pydicom: unpacked frames placed by ImagePositionPatient
    frames = seg_ds.pixel_array.reshape(-1, rows, cols)
    by_pos = np.zeros_like(by_hd)
    src_pos = np.array([np.array(d.ImagePositionPatient, float) for d in sources])
    for f, item in enumerate(seg_ds.PerFrameFunctionalGroupsSequence):
        pos = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        k = int(np.argmin(np.linalg.norm(src_pos - pos, axis=1)))
        assert np.linalg.norm(src_pos[k] - pos) < 1e-3, (pos, src_pos[k])
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        by_pos[k][frames[f] == 1] = number_to_value[number]
    if not np.array_equal(by_hd, by_pos):
        sys.exit("highdicom and pydicom decode the SEG differently")
    by_hd.tofile(args.out + ".u8")
    info = {"segments": [s.SegmentLabel for s in seg_ds.SegmentSequence],
            "frames": int(seg_ds.NumberOfFrames)}
    with open(args.out + ".json", "w") as f:
        json.dump(info, f)


def hd_write_seg(args):
    """A BINARY SEG written by highdicom from a label map (OUT_PREFIX.u8 layout) and a segment
    list [{"value", "label", "type": [scheme, value, meaning], "modifier": [...] | null}]."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    sources = [pydicom.dcmread(os.path.join(args.source, f)) for f in sorted(os.listdir(args.source))]
    normal = np.cross(np.array(sources[0].ImageOrientationPatient[:3], float),
                      np.array(sources[0].ImageOrientationPatient[3:], float))
    sources.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    labels = np.fromfile(args.labels, np.uint8).reshape(len(sources), rows, cols)
    spec = json.load(open(args.spec))
    mask = np.zeros(labels.shape, np.uint8)
    descriptions = []
    for number, seg in enumerate(spec, start=1):
        mask[labels == seg["value"]] = number
        kind = Code(seg["type"][1], seg["type"][0], seg["type"][2])
        if seg.get("modifier"):
            m = seg["modifier"]
            modifier = hd.sr.CodedConcept(m[1], m[0], m[2])
        else:
            modifier = None
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=seg["label"],
            segmented_property_category=Code("123037004", "SCT", "Anatomical Structure"),
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        if modifier is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(desc)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=50,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="highdicom",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="1",
    )
    seg.save_as(args.out)


def labelmap_read(args, seg_ds, sources, uids, names, rows, cols):
    """A LABELMAP SEG (Supplement 243; highdicom 0.22 predates it) with plain pydicom: each
    frame's pixel values are segment numbers, PixelPaddingValue is the background, frames are
    placed by ImagePositionPatient and cross-checked against the referenced source instance."""
    assert seg_ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7", seg_ds.SOPClassUID
    background = int(seg_ds.get("PixelPaddingValue", 0))
    lut = np.zeros(65536, np.uint8)
    described = {background}
    for s in seg_ds.SegmentSequence:
        number = int(s.SegmentNumber)
        described.add(number)
        if number != background:
            lut[number] = int(names[s.SegmentLabel])
    frames = seg_ds.pixel_array.reshape(-1, rows, cols)
    undescribed = set(np.unique(frames).tolist()) - described
    if undescribed:
        sys.exit(f"pixel values {sorted(undescribed)} are not described segments")
    out = np.zeros((len(uids), rows, cols), np.uint8)
    src_pos = np.array([np.array(d.ImagePositionPatient, float) for d in sources])
    for f, item in enumerate(seg_ds.PerFrameFunctionalGroupsSequence):
        pos = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        k = int(np.argmin(np.linalg.norm(src_pos - pos, axis=1)))
        assert np.linalg.norm(src_pos[k] - pos) < 1e-3, (pos, src_pos[k])
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert ref == uids[k], (ref, uids[k])
        assert "SegmentIdentificationSequence" not in item
        out[k] = lut[frames[f]]
    out.tofile(args.out + ".u8")
    info = {"segments": [s.SegmentLabel for s in seg_ds.SegmentSequence],
            "frames": int(seg_ds.NumberOfFrames), "bits": int(seg_ds.BitsAllocated)}
    with open(args.out + ".json", "w") as f:
        json.dump(info, f)


def as_binary_class(args):
    """A copy of a LABELMAP SEG under the BINARY Segmentation SOP class, so that a validator
    that predates Supplement 243 checks every module it knows."""
    ds = pydicom.dcmread(args.seg)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(args.out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-series")
    w.add_argument("out")
    w.add_argument("--rows", type=int, default=40)
    w.add_argument("--cols", type=int, default=48)
    w.add_argument("--slices", type=int, default=12)
    w.add_argument("--spacing", type=float, default=2.5)
    w.add_argument("--axis", type=float, nargs=3, default=[0.3, 1.0, 0.2])
    w.add_argument("--angle", type=float, default=0.0)
    w.add_argument("--syntax", choices=sorted(SYNTAXES), default="explicit")
    w.add_argument("--modality", default="CT")
    w.add_argument("--slope", type=float, default=1.0)
    w.add_argument("--intercept", type=float, default=-1024.0)
    w.add_argument("--reverse", action="store_true")
    w.add_argument("--missing", action="store_true")
    w.add_argument("--duplicate", action="store_true")
    w.add_argument("--tilt", type=float, default=0.0)
    w.add_argument("--multiframe", action="store_true")
    w.add_argument("--no-pixels", action="store_true")
    w.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("sitk-read")
    r.add_argument("dir")
    r.add_argument("out")
    s = sub.add_parser("seg-read")
    s.add_argument("seg")
    s.add_argument("source")
    s.add_argument("names")
    s.add_argument("out")
    h = sub.add_parser("hd-write-seg")
    h.add_argument("source")
    h.add_argument("labels")
    h.add_argument("spec")
    h.add_argument("out")
    c = sub.add_parser("as-binary-class")
    c.add_argument("seg")
    c.add_argument("out")
    args = p.parse_args()
    commands = {"write-series": write_series, "sitk-read": sitk_read, "seg-read": seg_read,
                "hd-write-seg": hd_write_seg, "as-binary-class": as_binary_class}
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
