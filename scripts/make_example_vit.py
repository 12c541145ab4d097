#!/usr/bin/env python3
"""Build prunec's built-in example model, examples/tiny-vit/.

A small torchvision VisionTransformer (random weights, seed 0, eval mode), exported the way
torchvision ViTs are usually exported to ONNX: torch.onnx.export (TorchScript exporter), opset 17,
input `pixel_values` [batch_size, 3, 64, 64], output `logits` [batch_size, 10], batch axis dynamic.
Writes model.onnx, ref_in.npy (a batch-2 input) and ref_out.npy (torch's output for it).

Needs torch, torchvision, onnx and numpy (Debian: python3-torch python3-torchvision python3-onnx).
Run from anywhere:  /usr/bin/python3 scripts/make_example_vit.py [--out DIR]
"""
import argparse
import os
import sys

import numpy as np
import onnx
import torch
from torchvision.models.vision_transformer import VisionTransformer

CONFIG = dict(
    image_size=64,
    patch_size=8,  # 8x8 = 64 patches + CLS = 65 tokens
    num_layers=4,
    num_heads=2,
    hidden_dim=48,  # head dim 24; hidden 64 / MLP 128 would put the file over 500 KB
    mlp_dim=96,
    num_classes=10,
)
OPSET = 17
SEED = 0


def build() -> VisionTransformer:
    torch.manual_seed(SEED)
    model = VisionTransformer(**CONFIG)
    # torchvision zero-initialises the classifier, which would make every logit 0: give it
    # nn.Linear's default init instead (still from the same seeded generator).
    model.heads.head.reset_parameters()
    return model.eval()


@torch.no_grad()
def cls_attention_margin(model: VisionTransformer, x: torch.Tensor, layer: int, keep: float) -> float:
    """Relative gap between the last kept and the first dropped patch under `after layer L keep p
    by cls-attn`: CLS row of layer L's own attention (docs: `after layer L` scores with layer L's
    map), averaged over heads, smallest over the batch. A clear margin means backends that round
    slightly differently still keep the same tokens."""
    n = x.shape[0]
    h = model._process_input(x)
    h = torch.cat([model.class_token.expand(n, -1, -1), h], dim=1)
    h = h + model.encoder.pos_embedding
    blocks = list(model.encoder.layers)
    for blk in blocks[:layer]:
        h = blk(h)
    blk = blocks[layer]
    attn = blk.self_attention
    y = blk.ln_1(h)
    _, w = attn(y, y, y, need_weights=True, average_attn_weights=True)
    cls_row = w[:, 0, 1:]  # [N, patches]
    k = max(1, int(cls_row.shape[1] * keep + 0.5))  # round half up, as the .prune language does
    s = torch.sort(cls_row, dim=1, descending=True).values
    gap = (s[:, k - 1] - s[:, k]) / s[:, k - 1]
    return float(gap.min())


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "examples", "tiny-vit"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    model = build()
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(2, 3, CONFIG["image_size"], CONFIG["image_size"], generator=g)
    with torch.no_grad():
        y = model(x)

    path = os.path.join(out, "model.onnx")
    torch.onnx.export(
        model,
        (x,),
        path,
        opset_version=OPSET,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch_size"}, "logits": {0: "batch_size"}},
        do_constant_folding=True,
        export_params=True,
    )
    m = onnx.load(path)
    onnx.checker.check_model(m)
    np.save(os.path.join(out, "ref_in.npy"), x.numpy().astype("<f4"))
    np.save(os.path.join(out, "ref_out.npy"), y.numpy().astype("<f4"))

    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, onnx {onnx.__version__}")
    print(f"wrote {path}: {os.path.getsize(path)} bytes, {params} parameters, {len(m.graph.node)} nodes, opset {OPSET}")
    print(f"ref_out logits: {y.numpy().round(4).tolist()}")
    print(f"cls-attn margin, after layer 1 keep 50%: {cls_attention_margin(model, x, 1, 0.5):.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
