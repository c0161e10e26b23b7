"""Python side of checkpoint/tests/torch_interop.rs (real torch / MONAI).

Usage: torch_interop.py <command> <dir>

Expected values travel as <stem>.manifest.tsv (name, dtype, shape, bin file per line, in
state_dict order) plus one raw .bin per tensor: contiguous, little-endian, C order.
"""

import collections
import copy
import os
import sys

import torch


def raw(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def dtype_name(t):
    return str(t.dtype).replace("torch.", "")


def write_expected(d, stem, sd):
    lines = []
    for i, (name, t) in enumerate(sd.items()):
        assert "\t" not in name and "\n" not in name
        bin_name = f"{stem}.{i}.bin"
        with open(os.path.join(d, bin_name), "wb") as f:
            f.write(raw(t))
        shape = ",".join(str(s) for s in t.shape)
        lines.append(f"{name}\t{dtype_name(t)}\t{shape}\t{bin_name}\n")
    with open(os.path.join(d, f"{stem}.manifest.tsv"), "w") as f:
        f.writelines(lines)


def read_expected(d, stem):
    out = []
    with open(os.path.join(d, f"{stem}.manifest.tsv")) as f:
        for line in f:
            name, dtype, shape, bin_name = line.rstrip("\n").split("\t")
            shape = [int(s) for s in shape.split(",")] if shape else []
            with open(os.path.join(d, bin_name), "rb") as b:
                out.append((name, dtype, shape, b.read()))
    return out


def check_against(sd, expected, what):
    assert list(sd.keys()) == [e[0] for e in expected], (what, list(sd.keys()))
    for name, dtype, shape, data in expected:
        t = sd[name]
        assert type(t) is torch.Tensor, (what, name, type(t))
        assert dtype_name(t) == dtype, (what, name, t.dtype, dtype)
        assert list(t.shape) == shape, (what, name, t.shape, shape)
        assert raw(t) == data, (what, name, "values differ")


def save_fixtures(d):
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.randn(10)
    with_attr = torch.randn(2, 2)
    with_attr.note = "a tensor with instance state (pickled via _rebuild_from_type_v2)"
    tensors = collections.OrderedDict()
    tensors["f32"] = torch.randn(2, 3, 4)
    tensors["f64"] = torch.randn(5, dtype=torch.float64)
    tensors["f16"] = torch.randn(3, 3).half()
    tensors["bf16"] = torch.randn(4, 2).bfloat16()
    tensors["i64"] = torch.tensor([-(2**40), -1, 0, 1, 2**62], dtype=torch.int64)
    tensors["i32"] = torch.randint(-(2**31), 2**31 - 1, (2, 2), dtype=torch.int32)
    tensors["i16"] = torch.randint(-(2**15), 2**15 - 1, (7,), dtype=torch.int16)
    tensors["i8"] = torch.randint(-128, 127, (3, 1, 2), dtype=torch.int8)
    tensors["u8"] = torch.randint(0, 255, (6,), dtype=torch.uint8)
    tensors["bool"] = torch.tensor([True, False, True, True])
    tensors["scalar"] = torch.tensor(3.5)
    tensors["num_batches_tracked"] = torch.tensor(7)
    tensors["empty"] = torch.zeros(0, 3)
    tensors["transposed"] = base.t()
    tensors["permuted5d"] = torch.randn(2, 3, 1, 4, 2).permute(4, 0, 3, 2, 1)
    tensors["offset_slice"] = base[1:3, 2:5]
    tensors["shared_a"] = shared[:6]
    tensors["shared_b"] = shared[4:].view(2, 3)
    tensors["expanded"] = torch.arange(3.0).expand(2, 3)
    tensors["parameter"] = torch.nn.Parameter(torch.randn(3))
    tensors["with_attr"] = with_attr
    torch.save(tensors, os.path.join(d, "dtypes.pt"))
    write_expected(d, "dtypes", tensors)

    conv = torch.nn.Conv3d(2, 4, kernel_size=3, padding=1)
    torch.save(conv.state_dict(), os.path.join(d, "conv3d.pt"))
    write_expected(d, "conv3d", conv.state_dict())
    torch.save(conv.state_dict(), os.path.join(d, "conv3d_proto4.pt"), pickle_protocol=4)

    # MONAI CheckpointSaver-style wrapper with extra entries, incl. a real optimizer state
    trained = copy.deepcopy(conv)
    opt = torch.optim.Adam(trained.parameters(), lr=1e-3)
    trained(torch.randn(1, 2, 4, 4, 4)).sum().backward()
    opt.step()
    wrapped = {"model": conv.state_dict(), "epoch": 3, "optimizer": opt.state_dict()}
    torch.save(wrapped, os.path.join(d, "wrapped.pt"))
    torch.save({"state_dict": conv.state_dict(), "meta": {"x": [1, 2.5, None]}},
               os.path.join(d, "lightning.pt"))

    torch.save(conv.state_dict(), os.path.join(d, "legacy.pt"), _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), os.path.join(d, "script.pt"))


def check_rust(d):
    expected = read_expected(d, "rust")
    path = os.path.join(d, "rust.pt")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert type(sd) is collections.OrderedDict, type(sd)
    check_against(sd, expected, "weights_only")
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    check_against(sd, expected, "mmap")
    with open(path, "rb") as f:
        sd = torch.load(f, map_location="cpu", weights_only=True)
    check_against(sd, expected, "file object")


def segresnet():
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=3, in_channels=1, out_channels=5, init_filters=8,
                     blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], dropout_prob=0.2)


def segresnet_save(d):
    torch.manual_seed(0)
    sd = segresnet().state_dict()
    torch.save(sd, os.path.join(d, "segresnet.pt"))
    write_expected(d, "segresnet", sd)


def segresnet_check(d):
    original = torch.load(os.path.join(d, "segresnet.pt"), weights_only=True)
    torch.manual_seed(1)
    net = segresnet()
    assert any(not torch.equal(v, original[k]) for k, v in net.state_dict().items())
    path = os.path.join(d, "segresnet_rust.pt")
    try:
        from ignite.engine import Engine
        from monai.handlers import CheckpointLoader
    except ImportError:
        print("pytorch-ignite is not installed: loading with net.load_state_dict(strict=True)")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    else:
        CheckpointLoader(load_path=path, load_dict={"model": net}, strict=True,
                         map_location="cpu")(Engine(lambda engine, batch: None))
        print("loaded with monai.handlers.CheckpointLoader(strict=True)")
    loaded = net.state_dict()
    assert list(loaded.keys()) == list(original.keys())
    for k, v in original.items():
        assert torch.equal(loaded[k], v), k
    # the Rust file itself is a bare OrderedDict with the original names and order
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert type(sd) is collections.OrderedDict
    check_against(sd, read_expected(d, "segresnet"), "segresnet_rust")


if __name__ == "__main__":
    command, directory = sys.argv[1], sys.argv[2]
    {
        "save-fixtures": save_fixtures,
        "check-rust": check_rust,
        "segresnet-save": segresnet_save,
        "segresnet-check": segresnet_check,
    }[command](directory)
