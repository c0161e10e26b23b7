"""Slicer's Scribbles panel, driven by the official monailabel client (docs/scribbles.md): the
scribbles models in /info/, a segmentation loaded as segments, then `onUpdateScribbles`' call: every segment
exported to one labelmap (segment i -> value i + 1, the scribbles layers last), `label_info`,
`roi`, `selected_label_name` and the options table's config, on a datastore image and on a
session. Slicer imports the answer into the selected segment alone, so the answer must be that
structure's mask: unchanged outside the ROI, never over another segment."""
import json
import os
import tempfile

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monailabel.client.client import MONAILabelClientException

from conftest import REPO, SMALL_CT

pytestmark = pytest.mark.ferrolabel_only

MODEL = "wholeBody_ct_segmentation"
METHODS = ("Histogram+GraphCut", "Model+GraphCut")
ROI = [30, 90, 20, 80, 5, 25]  # i0, i1, j0, j1, k0, k1 (ends exclusive)
SMALL_SEG = os.path.join(REPO, "data", "totalseg", "example_seg.nii.gz")
CLASSES = os.path.join(REPO, "data", "totalseg", "totalseg_v2_classes.json")


def slicer_params(info, method):
    """`getParamsFromConfig`: each list value collapsed to its first element; then `highres`
    switched off in the options table (lowres probabilities: the test stays short)."""
    cfg = info["models"][method]["config"]
    p = {k: (v[0] if isinstance(v, list) else v) for k, v in cfg.items()}
    p.update({"result_extension": ".nrrd", "result_dtype": "uint8"})
    if "highres" in p:
        p["highres"] = False
    return p


@pytest.fixture(scope="module")
def segmented(client):
    """The segmentation the annotator corrects, as Slicer's segments: TotalSegmentator's own
    segmentation of the same CT (data/totalseg/NOTICE.md), whose liver is the structure fixed."""
    info = client.info()
    labels = np.asanyarray(nib.load(SMALL_SEG).dataobj).astype(np.int64)
    with open(CLASSES) as f:
        names = {int(k): v for k, v in json.load(f)["labels"].items()}
    present = sorted(int(v) for v in np.unique(labels) if v != 0)
    return info, labels, [(names[v], v) for v in present]


def scribbles_upload(labels, segments, roi):
    """ExportSegmentsToLabelmapNode of every segment (the structures, then background_scribbles
    and foreground_scribbles drawn over them) + label_info, and the chosen structure."""
    seg_value = {v: i + 1 for i, (_, v) in enumerate(segments)}
    out = np.zeros(labels.shape, np.uint8)
    for v, sv in seg_value.items():
        out[labels == v] = sv
    bg_id, fg_id = len(segments) + 1, len(segments) + 2
    box = tuple(slice(roi[2 * a], roi[2 * a + 1]) for a in range(3))
    inside = labels[box]
    # the structure with the most voxels in the ROI is the one the user corrects
    values, counts = np.unique(inside[inside != 0], return_counts=True)
    selected = int(values[np.argmax(counts)])
    name = next(n for n, v in segments if v == selected)
    rng = np.random.default_rng(5)
    sub = out[box]
    fg_idx = np.argwhere(inside == selected)
    bg_idx = np.argwhere(inside != selected)
    for idx, value in ((fg_idx, fg_id), (bg_idx, bg_id)):
        pick = idx[rng.choice(len(idx), size=min(len(idx), 40), replace=False)]
        sub[tuple(pick.T)] = value
    label_info = [{"name": n, "id": i + 1} for i, (n, _) in enumerate(segments)]
    label_info += [{"name": "background_scribbles", "id": bg_id}, {"name": "foreground_scribbles", "id": fg_id}]
    return out, label_info, name, seg_value[selected], (bg_id, fg_id)


def save_like_slicer(volume, tmpdir):
    ref = nib.load(SMALL_CT)
    path = tempfile.NamedTemporaryFile(suffix=".nii.gz", dir=tmpdir, delete=False).name
    nib.save(nib.Nifti1Image(volume, ref.affine), path)
    return path


def check_answer(result, upload, sel_id, ids, roi):
    mask = sitk.GetArrayFromImage(sitk.ReadImage(result)).transpose(2, 1, 0)
    assert mask.shape == upload.shape
    assert set(np.unique(mask)) <= {0, 1}
    bg_id, fg_id = ids
    before = ((upload == sel_id) | (upload == fg_id)).astype(np.uint8)
    box = tuple(slice(roi[2 * a], roi[2 * a + 1]) for a in range(3))
    outside = np.ones(upload.shape, bool)
    outside[box] = False
    assert np.array_equal(mask[outside], before[outside]), "changed outside the ROI"
    other = (upload != 0) & (upload != sel_id) & (upload != bg_id) & (upload != fg_id)
    assert not mask[other].any(), "took over another structure"
    assert mask[upload == fg_id].all() and not mask[upload == bg_id].any(), "scribbles not obeyed"
    return mask


@pytest.mark.parametrize("method", METHODS)
def test_scribbles_on_a_datastore_image(client, segmented, method, tmp_path):
    info, labels, segments = segmented
    m = info["models"][method]
    assert m["type"] == "scribbles" and m["dimension"] == 3
    assert m["labels"] == info["models"][MODEL]["labels"]
    assert all(v != [] for v in m["config"].values())
    if method == "Model+GraphCut":
        assert m["config"]["highres"] == [True, False]
    upload, label_info, name, sel_id, ids = scribbles_upload(labels, segments, ROI)
    path = save_like_slicer(upload, tmp_path)
    params = slicer_params(info, method)
    params.update({"roi": ROI, "label_info": label_info, "selected_label_name": name})
    result, out = client.infer(method, "ct_small", params, label_in=path)
    assert result.endswith(".nrrd")
    assert out["label_names"] == {name: 1}
    check_answer(result, upload, sel_id, ids, ROI)


def test_scribbles_on_a_session_twice(client, segmented, tmp_path):
    """A local volume: PUT /session/, then two corrections; the second reuses the probabilities."""
    info, labels, segments = segmented
    session = client.create_session(SMALL_CT)["session_id"]
    upload, label_info, name, sel_id, ids = scribbles_upload(labels, segments, ROI)
    path = save_like_slicer(upload, tmp_path)
    params = slicer_params(info, "Model+GraphCut")
    params.update({"roi": ROI, "label_info": label_info, "selected_label_name": name})
    answers = []
    for _ in range(2):
        client.get_session(session)
        result, out = client.infer("Model+GraphCut", "ct_small_local", params, label_in=path, session_id=session)
        answers.append(check_answer(result, upload, sel_id, ids, ROI))
        assert out["scribbles"]["probability_cached"] == (len(answers) == 2)
    assert np.array_equal(answers[0], answers[1])


def test_bad_scribbles_are_refused(client, segmented, tmp_path):
    info, labels, segments = segmented
    upload, label_info, name, _, _ = scribbles_upload(labels, segments, ROI)
    path = save_like_slicer(upload, tmp_path)
    empty = save_like_slicer(np.where(upload > len(segments), 0, upload).astype(np.uint8), tmp_path)
    params = slicer_params(info, "Histogram+GraphCut")
    params.update({"roi": ROI, "label_info": label_info, "selected_label_name": name})
    for p, label in (({**params, "selected_label_name": "Segment_9"}, path),
                     ({**params, "roi": [200, 210, 0, 10, 0, 10]}, path),
                     (params, empty)):
        with pytest.raises(MONAILabelClientException) as e:
            client.infer("Histogram+GraphCut", "ct_small", p, label_in=label)
        assert "Status: 422" in e.value.msg and "detail" in e.value.msg
    assert client.datastore()["objects"]["ct_small"]["labels"] == {}
