#!/usr/bin/python3
"""Convert a torchvision ResNet state_dict to safetensors for the example trainer's --weights.

    /usr/bin/python3 scripts/convert_torchvision.py --arch resnet50 --state-dict resnet50.pth out.safetensors
    /usr/bin/python3 scripts/convert_torchvision.py --arch resnet18 --random out.safetensors   # no download

Uses Debian's python3-torch / python3-torchvision (no network: bring the .pth file yourself, e.g.
torchvision's ImageNet weights downloaded elsewhere). Tensor names are torchvision's
(conv1.weight, layer1.0.bn1.running_var, fc.bias, ...), which the C++ ResNet uses too;
num_batches_tracked buffers are dropped; everything is written as F32. The writer needs only the
standard library (no safetensors package).
"""
import argparse
import json
import struct


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: torch.Tensor}; written as little-endian F32 in name order."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").float().contiguous()
        data = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    import torch
    import torchvision
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--state-dict", help="a torchvision state_dict saved with torch.save")
    src.add_argument("--random", action="store_true", help="torchvision's random initialisation")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("out")
    args = ap.parse_args()
    model = getattr(torchvision.models, args.arch)(num_classes=args.num_classes)
    if args.state_dict:
        model.load_state_dict(torch.load(args.state_dict, map_location="cpu"))
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    write_safetensors(args.out, sd, {"source": "torchvision " + torchvision.__version__, "arch": args.arch})
    print("wrote %s: %d tensors" % (args.out, len(sd)))


if __name__ == "__main__":
    main()
