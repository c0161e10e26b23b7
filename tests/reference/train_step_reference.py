"""Reference for ferrolabel's training step, with real torch 2.13.0 and MONAI 1.4.0.

Run by `models/tests/train.rs` (never by hand in normal use); tensors travel as safetensors.

  adamw PARAMS GRADS LR WD STEPS OUT
      torch.optim.AdamW(lr=LR, weight_decay=WD) (betas, eps: torch's defaults) over the tensors of
      PARAMS; step k uses the gradient "<name>/<k>" of GRADS; writes the parameters after STEPS
      steps to OUT.
  train-forward WEIGHTS INIT_FILTERS INPUT TARGET OUT
      MONAI's SegResNet (the bundle's arguments, dropout_prob=0.0) with WEIGHTS (a bare
      state_dict, loaded strictly) in train mode on INPUT["x"], DiceCELoss(to_onehot_y=True,
      softmax=True) against TARGET["y"], backward; writes "logits", "loss" and "grad/<name>" to OUT.
"""
import sys

import torch
from safetensors.torch import load_file, save_file

torch.set_num_threads(2)


def adamw(params_path, grads_path, lr, wd, steps, out):
    params = {k: v.clone().requires_grad_(True) for k, v in load_file(params_path).items()}
    grads = load_file(grads_path)
    opt = torch.optim.AdamW(list(params.values()), lr=float(lr), weight_decay=float(wd))
    for k in range(int(steps)):
        opt.zero_grad()
        for name, p in params.items():
            p.grad = grads[f"{name}/{k}"].clone()
        opt.step()
    save_file({k: v.detach().contiguous() for k, v in params.items()}, out)


def train_forward(weights, init_filters, input_path, target_path, out):
    from monai.losses import DiceCELoss
    from monai.networks.nets import SegResNet

    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=int(init_filters),
                    blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], dropout_prob=0.0)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    net.train()
    x = load_file(input_path)["x"]
    y = load_file(target_path)["y"]
    logits = net(x)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, y)
    loss.backward()
    result = {"logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
    for name, p in net.named_parameters():
        result[f"grad/{name}"] = p.grad.contiguous()
    save_file(result, out)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "adamw":
        adamw(*args)
    elif cmd == "train-forward":
        train_forward(*args)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
