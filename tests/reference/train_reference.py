"""Reference computations for ferrolabel's training tests, with real MONAI 1.4.0 and torch.

Run by `models/tests/train.rs` (never by hand in normal use):

  map-v2 SEG_V2 V2_CLASSES_JSON METADATA_JSON OUT      TotalSegmentator v2 labels -> bundle labels by name
  prepare TRAIN_JSON IMAGE LABEL HIGHRES(0|1) MODE OUT  MONAI's train (MODE=train: deterministic part)
                                                        or validate preprocessing; writes OUT.json + raw
  loss LOGITS_RAW TARGET_RAW SHAPE_JSON                 DiceCELoss(to_onehot_y, softmax) -> prints value
  logits CKPT INIT_FILTERS INPUT_RAW SHAPE_JSON OUT_RAW CheckpointLoader(strict) + SegResNet eval forward
"""
import json
import sys

import numpy as np
import torch

torch.set_num_threads(2)


def shape_of(path):
    return json.load(open(path))["shape"]


def main():
    cmd = sys.argv[1]
    if cmd == "map-v2":
        import nibabel as nib

        seg, v2_json, meta_json, out = sys.argv[2:6]
        v2 = json.load(open(v2_json))["labels"]
        meta = json.load(open(meta_json))
        channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        v1 = {name.lower(): int(k) for k, name in channel_def.items()}
        lut = np.zeros(256, dtype=np.uint8)
        for k, name in v2.items():
            lut[int(k)] = v1.get(name.lower(), 0)
        img = nib.load(seg)
        data = np.asarray(img.dataobj).astype(np.int64)
        mapped = lut[data].astype(np.uint8)
        nib.save(nib.Nifti1Image(mapped, img.affine), out)
    elif cmd == "prepare":
        from monai.bundle import ConfigParser
        from monai.transforms import Compose

        train_json, image, label, highres, mode, out = sys.argv[2:8]
        parser = ConfigParser()
        parser.read_config(train_json)
        parser["displayable_configs"]["highres"] = highres == "1"
        if mode == "train":
            t = Compose(parser.get_parsed_content("train#deterministic_transforms"))
        else:
            t = parser.get_parsed_content("validate#preprocessing")
        d = t({"image": image, "label": label})
        img = d["image"].as_tensor().float().contiguous()
        lbl = d["label"].as_tensor().float().contiguous()
        img.numpy().astype("<f4").tofile(out + ".image.raw")
        lbl.numpy().astype("<f4").tofile(out + ".label.raw")
        json.dump({"shape": list(img.shape), "label_shape": list(lbl.shape)}, open(out + ".json", "w"))
    elif cmd == "loss":
        from monai.losses import DiceCELoss

        logits_raw, target_raw, shape_json = sys.argv[2:5]
        shape = shape_of(shape_json)
        logits = torch.from_numpy(np.fromfile(logits_raw, dtype="<f4").reshape(shape))
        target_shape = [shape[0], 1] + shape[2:]
        target = torch.from_numpy(np.fromfile(target_raw, dtype="<f4").reshape(target_shape))
        loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)
        print(repr(float(loss)))
    elif cmd == "logits":
        from ignite.engine import Engine
        from monai.handlers import CheckpointLoader
        from monai.networks.nets import SegResNet

        ckpt, init_filters, input_raw, shape_json, out_raw = sys.argv[2:7]
        net = SegResNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=105,
            init_filters=int(init_filters),
            blocks_down=[1, 2, 2, 4],
            blocks_up=[1, 1, 1],
            dropout_prob=0.2,
        )
        loader = CheckpointLoader(load_path=ckpt, load_dict={"model": net}, strict=True, map_location="cpu")
        loader(Engine(lambda engine, batch: None))
        net.eval()
        x = torch.from_numpy(np.fromfile(input_raw, dtype="<f4").reshape(shape_of(shape_json)))
        with torch.no_grad():
            y = net(x)
        y.numpy().astype("<f4").tofile(out_raw)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
