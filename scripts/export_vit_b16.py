#!/usr/bin/env python3
"""Export a torchvision ViT-B/16 with random weights for the bench table (issue 19).

scripts/bench-table.ts times ViT-B/16 next to ViT-Ti when this file exists: 12 layers, hidden 768,
12 heads, MLP 3072, 224x224, patch 16 (197 tokens), 1000 classes; seed 0, eval mode, exported as
torchvision ViTs usually are (torch.onnx.export, opset 17, `pixel_values` [batch_size, 3, 224, 224]
-> `logits`, batch axis dynamic). About 346 MB: written to scratch/, never committed. Random weights:
its predictions mean nothing, only its shapes and timings do.

Needs Debian's python3-torch, python3-torchvision, python3-onnx.
Run from anywhere:  /usr/bin/python3 scripts/export_vit_b16.py [--out FILE]
"""
import argparse
import os
import sys

import torch
from torchvision.models.vision_transformer import VisionTransformer


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "scratch", "vit-b16", "model.onnx"))
    out = os.path.abspath(ap.parse_args().out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.manual_seed(0)
    model = VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
    model.heads.head.reset_parameters()  # torchvision zero-initialises it: every logit would be 0
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(
        model,
        (x,),
        out,
        opset_version=17,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch_size"}, "logits": {0: "batch_size"}},
        do_constant_folding=True,
    )
    print(f"wrote {out}: {os.path.getsize(out)} bytes, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
