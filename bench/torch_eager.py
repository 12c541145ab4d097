#!/usr/bin/env python3
"""What users run today: the same schedule as a PyTorch eager patch (issue 19's comparison row).

scripts/bench-table.ts runs this where Debian's torch is installed (never a runtime dependency of
prunec). It rebuilds the ONNX file's torchvision VisionTransformer in torch with the file's own
weights, then times, side by side in one process:
  dense  - the model as torchvision runs it;
  pruned - a FasterVLM-style patch of it: layer L attends with need_weights=True, the mean over
           heads of the CLS query's attention to each patch scores the patches, the K best are kept
           in position order behind the CLS token, and layers L+1.. run on those K+1 tokens
           (prunec's `after layer L keep K tokens by cls-attn`, docs/language.md).
It prints JSON: latencies (medians), the logits of both and each example's kept positions, which
the caller compares with onnxruntime's dense logits and prunec's `prunec.stage0.indices`.

  /usr/bin/python3 bench/torch_eager.py --onnx MODEL --heads H --layer L --keep K \
      --input X.f32 --batch B [--runs 30] [--threads T]
X.f32: float32 little-endian [B, C, S, S], the model's input.
"""
import argparse
import json
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper
from torchvision.models.vision_transformer import VisionTransformer


def load(path: str, heads: int) -> VisionTransformer:
    m = onnx.load(path)
    g = m.graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    # The exporter stores some parameters (layer norms among them) as Constant nodes.
    for n in g.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            init[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    # Equal parameters (all-ones norms, say) are stored once and passed on by Identity nodes.
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in init:
            init[n.output[0]] = init[n.input[0]]
    t = lambda a: torch.from_numpy(np.array(a, dtype=a.dtype, copy=True))
    conv = next(n for n in g.node if n.op_type == "Conv")
    w = init[conv.input[1]]
    hidden, channels, patch = w.shape[0], w.shape[1], w.shape[2]
    pos = init["encoder.pos_embedding"]
    size = int(round((pos.shape[1] - 1) ** 0.5)) * patch
    layers = sorted({int(n.name.split("encoder_layer_")[1].split("/")[0]) for n in g.node if "encoder_layer_" in n.name})
    head = next(n for n in g.node if n.name.startswith("/heads/") and n.op_type == "Gemm")
    classes = init[head.input[1]].shape[0]
    in_layer = lambda i: [n for n in g.node if n.name.startswith(f"/encoder/layers/encoder_layer_{i}/")]
    mlp = next(init[x] for n in in_layer(0) if n.op_type == "MatMul" and "mlp" in n.name for x in n.input if x in init)
    model = VisionTransformer(size, patch, len(layers), heads, hidden, mlp.shape[1], num_classes=classes)
    model.conv_proj = nn.Conv2d(channels, hidden, patch, patch)
    sd = {
        "conv_proj.weight": t(w),
        "conv_proj.bias": t(init[conv.input[2]]),
        "class_token": t(init["class_token"]),
        "encoder.pos_embedding": t(pos),
        "heads.head.weight": t(init[head.input[1]]),
        "heads.head.bias": t(init[head.input[2]]),
    }
    ln = next(n for n in g.node if n.name.startswith("/encoder/ln/") and n.op_type == "LayerNormalization")
    sd["encoder.ln.weight"], sd["encoder.ln.bias"] = t(init[ln.input[1]]), t(init[ln.input[2]])
    for i in layers:
        p = f"encoder.layers.encoder_layer_{i}."
        nodes = in_layer(i)
        for k in ("ln_1", "ln_2"):
            n = next(n for n in nodes if f"/{k}/" in n.name and n.op_type == "LayerNormalization")
            sd[p + k + ".weight"], sd[p + k + ".bias"] = t(init[n.input[1]]), t(init[n.input[2]])
        # MatMul weights are stored transposed ([in, out]); the Gemm (out_proj) keeps torch's [out, in] with transB=1.
        mats = [(n, next(x for x in n.input if x in init)) for n in nodes if n.op_type == "MatMul" and any(x in init for x in n.input)]
        for n, x in mats:
            key = "self_attention.in_proj_weight" if "self_attention" in n.name else "mlp.0.weight" if "mlp.0" in n.name else "mlp.3.weight"
            sd[p + key] = t(init[x].T)
        gemm = next(n for n in nodes if n.op_type == "Gemm" and "self_attention" in n.name)
        sd[p + "self_attention.out_proj.weight"], sd[p + "self_attention.out_proj.bias"] = t(init[gemm.input[1]]), t(init[gemm.input[2]])
        for key in ("self_attention.in_proj_bias", "mlp.0.bias", "mlp.3.bias"):
            sd[p + key] = t(init[p + key])
    model.load_state_dict(sd, strict=True)
    return model.eval()


def pruned_forward(model: VisionTransformer, x: torch.Tensor, layer: int, keep: int):
    """torchvision's forward with a FasterVLM-style stage after `layer`."""
    x = model._process_input(x)
    n = x.shape[0]
    x = torch.cat([model.class_token.expand(n, -1, -1), x], dim=1)
    enc = model.encoder
    x = enc.dropout(x + enc.pos_embedding)
    kept = None
    for i, block in enumerate(enc.layers):
        if i != layer:
            x = block(x)
            continue
        # EncoderBlock.forward, with the attention probabilities asked for (mean over heads).
        y = block.ln_1(x)
        y, w = block.self_attention(y, y, y, need_weights=True, average_attn_weights=True)
        x = x + block.dropout(y)
        x = x + block.mlp(block.ln_2(x))
        scores = w[:, 0, 1:]  # the CLS query's attention to each patch
        top = torch.topk(scores, keep, dim=1).indices.sort(dim=1).values + 1
        kept = torch.cat([torch.zeros(n, 1, dtype=top.dtype), top], dim=1)
        x = torch.gather(x, 1, kept.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    x = enc.ln(x)
    return model.heads(x[:, 0]), kept


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--keep", type=int, required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load(a.onnx, a.heads)
    c = model.conv_proj.in_channels
    s = model.image_size
    x = torch.from_numpy(np.fromfile(a.input, dtype="<f4").reshape(a.batch, c, s, s).copy())
    dense = lambda: model(x)
    pruned = lambda: pruned_forward(model, x, a.layer, a.keep)
    with torch.inference_mode():
        for _ in range(3):
            dense(), pruned()
        times = {"dense": [], "pruned": []}
        for _ in range(max(1, a.runs // 5)):
            for name, f in (("dense", dense), ("pruned", pruned)):
                for _ in range(5):
                    t0 = time.perf_counter()
                    f()
                    times[name].append((time.perf_counter() - t0) * 1000)
        logits_dense = dense()
        logits_pruned, kept = pruned()
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "denseMs": med(times["dense"]),
        "prunedMs": med(times["pruned"]),
        "logitsDense": logits_dense.flatten().tolist(),
        "logitsPruned": logits_pruned.flatten().tolist(),
        "kept": kept.tolist(),
    }))


if __name__ == "__main__":
    main()
