#!/usr/bin/env python3
"""Export small real ONNX models in the forms users actually produce (prunec test fixtures).

Each model is a few-layer transformer with random weights (fixed seeds, eval mode, CPU), exported
with torch.onnx.export (the TorchScript exporter of torch 1.13). For every model NAME the script
writes into the output folder (default test/fixtures/exports/):

  NAME.onnx            the model
  input-SxS.npy        the batch-2 reference input (float32) of every model taking SxS images
  NAME.OUTPUT.npy      torch's output for it, one file per graph output
  manifest.json        for each model, facts known from how it was built here (layers, heads,
                       hidden, tokens, special tokens, token/batch axes of the residual stream,
                       norm kind and placement, inputs, outputs, ...), not from prunec

Forms: torchvision ViT at opsets 13/14/17 (LayerNorm decomposed below 17) and without constant
folding; BERT-style post-norm nn.TransformerEncoder (opsets 17 and 14); the same sequence-first;
a static-batch ViT; LLaMA-style RMSNorm encoders (rsqrt and div forms); einsum attention;
torchvision Swin (windowed attention, patch merging); a ViT with a per-token output; a DeiT with
cls + distillation tokens. The script asserts the op types each form is expected to export.

Needs torch 1.13, torchvision, onnx, numpy (Debian: python3-torch python3-torchvision python3-onnx).
Run from the repository root:

  /usr/bin/python3 scripts/export_forms.py [--out DIR] [--only NAME,NAME]

Running it twice gives byte-identical .onnx files. Do not wrap the export in torch.no_grad(): torch
1.13 would take the fused nn.MultiheadAttention / TransformerEncoderLayer fast path, which has no
ONNX symbolic (see the manifest notes).
"""
import argparse
import collections
import io
import json
import math
import os
import sys
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "exports")
BATCH = 2
NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class ImageFront(nn.Module):
    """Conv patch embedding, prepended learned special tokens (CLS, distillation, ...), learned
    position embedding over all tokens. Output [batch, prefix + patches, hidden]."""

    def __init__(self, image_size: int, patch_size: int, hidden: int, prefix: int = 1):
        super().__init__()
        self.proj = nn.Conv2d(3, hidden, kernel_size=patch_size, stride=patch_size)
        patches = (image_size // patch_size) ** 2
        self.prefix_tokens = nn.Parameter(torch.randn(1, prefix, hidden) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, prefix + patches, hidden) * 0.02)

    def forward(self, x):
        h = self.proj(x).flatten(2).transpose(1, 2)  # [B, P, C]
        n = h.shape[0]
        h = torch.cat([self.prefix_tokens.expand(n, -1, -1), h], dim=1)
        return h + self.pos_embedding


class PostNormClassifier(nn.Module):
    """BERT layout: front, nn.TransformerEncoder of post-norm layers, classifier on the CLS row."""

    def __init__(self, image_size, patch_size, hidden, heads, mlp, layers, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.front = ImageFront(image_size, patch_size, hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, mlp, dropout=0.0, batch_first=batch_first, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x):
        h = self.front(x)  # [B, T, C]
        if self.batch_first:
            h = self.encoder(h)
            return self.head(h[:, 0])
        h = h.permute(1, 0, 2)  # [T, B, C]
        h = self.encoder(h)
        return self.head(h[0])


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6, form="rsqrt"):
        super().__init__()
        self.eps = eps
        self.form = form
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(dim))

    def forward(self, x):
        if self.form == "rsqrt":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ExplicitAttention(nn.Module):
    """q/k/v Linear, reshape to heads, softmax(q kᵀ · scale) v, o Linear.
    mode 'matmul' (LLaMA style, separate q/k/v, no bias) or 'einsum' (timm style fused qkv,
    einsum for the scores and the weighted sum)."""

    def __init__(self, hidden, heads, mode):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale = self.head_dim ** -0.5
        self.mode = mode
        if mode == "matmul":
            self.q_proj = nn.Linear(hidden, hidden, bias=False)
            self.k_proj = nn.Linear(hidden, hidden, bias=False)
            self.v_proj = nn.Linear(hidden, hidden, bias=False)
            self.o_proj = nn.Linear(hidden, hidden, bias=False)
        else:
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.proj = nn.Linear(hidden, hidden)

    def forward(self, x):
        b, t, c = x.shape
        if self.mode == "matmul":
            q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            p = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
            o = (p @ v).transpose(1, 2).reshape(b, t, c)
            return self.o_proj(o)
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        p = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) * self.scale, dim=-1)
        o = torch.einsum("bhqk,bhkd->bhqd", p, v).transpose(1, 2).reshape(b, t, c)
        return self.proj(o)


class LlamaBlock(nn.Module):
    def __init__(self, hidden, heads, mlp, norm_form):
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, form=norm_form)
        self.self_attn = ExplicitAttention(hidden, heads, "matmul")
        self.post_attention_layernorm = RMSNorm(hidden, form=norm_form)
        self.gate_proj = nn.Linear(hidden, mlp, bias=False)
        self.up_proj = nn.Linear(hidden, mlp, bias=False)
        self.down_proj = nn.Linear(mlp, hidden, bias=False)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        y = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class TimmBlock(nn.Module):
    def __init__(self, hidden, heads, mlp):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.attn = ExplicitAttention(hidden, heads, "einsum")
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.fc1 = nn.Linear(hidden, mlp)
        self.fc2 = nn.Linear(mlp, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PreNormClassifier(nn.Module):
    """Front, a list of pre-norm blocks (module path `layers.N`), final norm, head on the CLS row."""

    def __init__(self, image_size, patch_size, hidden, blocks, final_norm):
        super().__init__()
        self.front = ImageFront(image_size, patch_size, hidden)
        self.layers = nn.ModuleList(blocks)
        self.norm = final_norm
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x):
        h = self.front(x)
        for blk in self.layers:
            h = blk(h)
        return self.head(self.norm(h)[:, 0])


class MeanPoolClassifier(nn.Module):
    """No special token: patch embedding + position embedding, pre-norm blocks, final norm, head on
    the mean over tokens (how CLS-free encoders classify)."""

    def __init__(self, image_size, patch_size, hidden, blocks, final_norm):
        super().__init__()
        self.proj = nn.Conv2d(3, hidden, kernel_size=patch_size, stride=patch_size)
        self.pos_embedding = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2, hidden) * 0.02)
        self.layers = nn.ModuleList(blocks)
        self.norm = final_norm
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x):
        h = self.proj(x).flatten(2).transpose(1, 2) + self.pos_embedding
        for blk in self.layers:
            h = blk(h)
        return self.head(self.norm(h).mean(dim=1))


class DeiT(nn.Module):
    """DeiT layout: cls + distillation tokens before the patches, torchvision EncoderBlocks
    (nn.MultiheadAttention, pre-norm), final LayerNorm, inference logits = mean of the two heads."""

    def __init__(self, image_size, patch_size, hidden, heads, mlp, layers):
        super().__init__()
        self.front = ImageFront(image_size, patch_size, hidden, prefix=2)
        self.layers = nn.Sequential(
            *[EncoderBlock(heads, hidden, mlp, 0.0, 0.0, nn.LayerNorm) for _ in range(layers)]
        )
        self.ln = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, NUM_CLASSES)
        self.head_dist = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x):
        h = self.ln(self.layers(self.front(x)))
        return (self.head(h[:, 0]) + self.head_dist(h[:, 1])) / 2


class ViTWithHidden(nn.Module):
    """torchvision ViT returning (logits, last_hidden_state): the encoder output after its final
    LayerNorm, one row per token (CLS first)."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        v = self.vit
        h = v._process_input(x)
        n = h.shape[0]
        h = torch.cat([v.class_token.expand(n, -1, -1), h], dim=1)
        h = v.encoder(h)
        return v.heads(h[:, 0]), h


def tv_vit(image_size=32, patch_size=8, layers=2, heads=2, hidden=32, mlp=64):
    m = VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=layers, num_heads=heads,
        hidden_dim=hidden, mlp_dim=mlp, num_classes=NUM_CLASSES,
    )
    # torchvision zero-initialises the classifier (every logit would be 0).
    m.heads.head.reset_parameters()
    return m


# --------------------------------------------------------------------------------------------
# Forms
# --------------------------------------------------------------------------------------------

LN_FUSED = {"kind": "layernorm", "form": "fused", "onnxOp": "LayerNormalization"}
LN_DECOMP = {"kind": "layernorm", "form": "decomposed", "onnxOps": "ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add"}


def vit_facts(image_size=32, patch_size=8, layers=2, heads=2, hidden=32, mlp=64, prefix=1):
    patches = (image_size // patch_size) ** 2
    return dict(
        layers=layers, heads=heads, hidden=hidden, headSize=hidden // heads, mlpHidden=mlp,
        imageSize=image_size, patchSize=patch_size, patches=patches, tokens=patches + prefix,
        specialTokens=prefix, tokenAxis=1, batchAxis=0, streamLayout="[batch, tokens, hidden]",
    )


def forms():
    """name -> dict(build, opset, facts, ...). build() is called right after seeding."""
    F_ = {}
    pixel = lambda s: [{"name": "pixel_values", "shape": ["batch", 3, s, s], "dtype": "float32"}]
    logits = [{"name": "logits", "shape": ["batch", NUM_CLASSES], "dtype": "float32", "perToken": False}]

    tv_common = dict(
        specialTokenNames=["cls"], normPlacement="pre", finalNorm=True,
        attention="nn.MultiheadAttention (torchvision EncoderBlock): MatMul + Softmax",
        source="torchvision.models.vision_transformer.VisionTransformer(image_size=32, patch_size=8, "
        "num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)",
        modulePath="encoder.layers.encoder_layer_N",
    )
    for opset, norm in [(13, LN_DECOMP), (14, LN_DECOMP), (17, LN_FUSED)]:
        F_[f"vit-opset{opset}"] = dict(
            build=tv_vit, opset=opset, image=32,
            facts=dict(**vit_facts(), **tv_common, norm=norm),
            expect_ops={"Softmax", "MatMul", "Conv"} | ({"LayerNormalization"} if opset >= 17 else {"ReduceMean", "Sqrt"}),
            forbid_ops=set() if opset >= 17 else {"LayerNormalization"},
        )
    F_["vit-opset13-nofold"] = dict(
        build=tv_vit, opset=13, image=32, fold=False,
        facts=dict(**vit_facts(), **tv_common, norm=LN_DECOMP),
        expect_ops={"Softmax", "MatMul", "ReduceMean", "Sqrt"}, forbid_ops={"LayerNormalization"},
    )
    F_["static-batch"] = dict(
        build=tv_vit, opset=17, image=32, dynamic=False,
        facts=dict(**vit_facts(), **tv_common, norm=LN_FUSED),
        expect_ops={"Softmax", "MatMul", "LayerNormalization"},
    )
    F_["per-token-output"] = dict(
        build=lambda: ViTWithHidden(tv_vit()), opset=17, image=32,
        outputs=["logits", "last_hidden_state"],
        facts=dict(**vit_facts(), **tv_common, norm=LN_FUSED),
        out_specs=logits + [{"name": "last_hidden_state", "shape": ["batch", 17, 32], "dtype": "float32",
                             "perToken": True, "note": "encoder output after the final LayerNorm, CLS row first"}],
        expect_ops={"Softmax", "MatMul", "LayerNormalization"},
    )

    # BERT post-norm layout, 24x24 images, patch 4 -> 36 patches + CLS.
    pn = dict(image_size=24, patch_size=4, hidden=32, heads=2, mlp=64, layers=2)
    pn_facts = lambda **kw: dict(
        **vit_facts(24, 4, 2, 2, 32, 64), specialTokenNames=["cls"], normPlacement="post", finalNorm=False,
        attention="nn.MultiheadAttention inside nn.TransformerEncoderLayer (slow path): MatMul + Softmax",
        source="patch embed + CLS + pos, nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 2, 64, dropout=0, "
        "norm_first=False), 2), Linear on the CLS row",
        modulePath="encoder.layers.N", **kw,
    )
    for opset, norm in [(17, LN_FUSED), (14, LN_DECOMP)]:
        F_[f"postnorm-opset{opset}"] = dict(
            build=lambda: PostNormClassifier(**pn, batch_first=True), opset=opset, image=24,
            facts=pn_facts(norm=norm, batchFirstModule=True),
            expect_ops={"Softmax", "MatMul"} | ({"LayerNormalization"} if opset >= 17 else {"ReduceMean"}),
            forbid_ops={"LayerNormalization"} if opset < 17 else set(),
        )
    sf = pn_facts(norm=LN_FUSED, batchFirstModule=False)
    sf.update(tokenAxis=0, batchAxis=1, streamLayout="[tokens, batch, hidden]")
    F_["seqfirst-opset17"] = dict(
        build=lambda: PostNormClassifier(**pn, batch_first=False), opset=17, image=24,
        facts=sf, expect_ops={"Softmax", "MatMul", "LayerNormalization"},
    )

    # LLaMA-style pre-norm RMSNorm encoder, 32x32 patch 4 -> 64 patches + CLS.
    for name, form, ops in [("rmsnorm-opset14", "rsqrt", "Pow/ReduceMean/Add/Sqrt/Div(1, .)/Mul/Mul"),
                            ("rmsnorm-div-opset14", "div", "Pow/ReduceMean/Add/Sqrt/Div(x, .)/Mul")]:
        F_[name] = dict(
            build=(lambda form=form: PreNormClassifier(
                32, 4, 32, [LlamaBlock(32, 4, 64, form) for _ in range(2)], RMSNorm(32, form=form))),
            opset=14, image=32,
            facts=dict(
                **vit_facts(32, 4, 2, 4, 32, 64), specialTokenNames=["cls"], normPlacement="pre", finalNorm=True,
                norm={"kind": "rmsnorm", "form": "decomposed", "torch": (
                    "x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight" if form == "rsqrt"
                    else "x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight"), "onnxOps": ops, "eps": 1e-6},
                attention="explicit q/k/v Linear (no bias), q @ k^T * scale, Softmax, @ v: MatMul + Softmax",
                mlp="SiLU-gated (gate/up/down, Sigmoid*Mul)",
                source="PreNormClassifier(LlamaBlock x2) in scripts/export_forms.py",
                modulePath="layers.N",
            ),
            expect_ops={"Softmax", "MatMul", "ReduceMean", "Sqrt", "Pow", "Sigmoid"},
            forbid_ops={"LayerNormalization"},
        )

    F_["einsum-attn"] = dict(
        build=lambda: PreNormClassifier(
            32, 8, 32, [TimmBlock(32, 2, 64) for _ in range(2)], nn.LayerNorm(32, eps=1e-6)),
        opset=17, image=32,
        facts=dict(
            **vit_facts(), specialTokenNames=["cls"], normPlacement="pre", finalNorm=True, norm=LN_FUSED,
            attention="timm-style fused qkv Linear; scores einsum('bhqd,bhkd->bhqk') * scale, Softmax, "
            "einsum('bhqk,bhkd->bhqd'): Einsum + Softmax",
            source="PreNormClassifier(TimmBlock x2) in scripts/export_forms.py",
            modulePath="layers.N",
        ),
        expect_ops={"Softmax", "Einsum", "LayerNormalization"},
    )

    F_["deit-two-tokens"] = dict(
        build=lambda: DeiT(32, 8, 32, 2, 64, 2), opset=17, image=32,
        facts=dict(
            **vit_facts(prefix=2), specialTokenNames=["cls", "distillation"], normPlacement="pre", finalNorm=True,
            norm=LN_FUSED, attention="nn.MultiheadAttention (torchvision EncoderBlock): MatMul + Softmax",
            source="DeiT in scripts/export_forms.py: cls + dist tokens, torchvision EncoderBlock x2, "
            "logits = (head(h[:,0]) + head_dist(h[:,1])) / 2",
            modulePath="layers.N",
        ),
        expect_ops={"Softmax", "MatMul", "LayerNormalization"},
    )

    F_["meanpool-nocls"] = dict(
        build=lambda: MeanPoolClassifier(
            32, 8, 32, [LlamaBlock(32, 2, 64, "rsqrt") for _ in range(2)], nn.LayerNorm(32, eps=1e-6)),
        opset=17, image=32,
        facts=dict(
            **vit_facts(prefix=0), specialTokenNames=[], normPlacement="pre", finalNorm=True,
            norm={"kind": "rmsnorm", "form": "decomposed", "onnxOps": "Pow/ReduceMean/Add/Sqrt/Div(1, .)/Mul/Mul"},
            attention="explicit q/k/v Linear (no bias), q @ k^T * scale, Softmax, @ v: MatMul + Softmax",
            classifier="final LayerNorm, mean over tokens, Linear (no CLS)",
            source="MeanPoolClassifier(LlamaBlock x2) in scripts/export_forms.py",
            modulePath="layers.N",
        ),
        expect_ops={"Softmax", "MatMul", "ReduceMean"},
    )

    F_["swin-tiny"] = dict(
        build=lambda: SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
            stochastic_depth_prob=0.0, num_classes=NUM_CLASSES),
        opset=17, image=32,
        facts=dict(
            layers=4, layersPerStage=[2, 2], heads=[2, 2], hidden=[16, 32], headSize=8, mlpHidden=[64, 128],
            imageSize=32, patchSize=4, patches=64, tokens=64, tokensPerStage=[64, 16],
            windowSize=[4, 4], tokensPerWindow=16, windowsPerStage=[4, 1],
            shiftedWindows="stage 0 block 1 (shift 2, torch.roll + attention mask); stage 1 has one window "
            "(window >= feature map) so torchvision disables the shift there",
            specialTokens=0, specialTokenNames=[], tokenAxis=[1, 2], batchAxis=0,
            streamLayout="[batch, H, W, hidden] (4-D; tokens are the H x W grid: 8x8 then 4x4 after patch merging)",
            normPlacement="pre", finalNorm=True, norm=LN_FUSED,
            attention="torchvision shifted_window_attention: windows via reshape/permute, MatMul + Add(relative "
            "position bias [+ shift mask]) + Softmax; batch*windows folded into the attention batch axis",
            classifier="final LayerNorm, permute to NCHW, AdaptiveAvgPool2d, Linear (no CLS)",
            source="torchvision.models.swin_transformer.SwinTransformer(patch_size=[4,4], embed_dim=16, "
            "depths=[2,2], num_heads=[2,2], window_size=[4,4], num_classes=10)",
            modulePath="features.{1,3}.N",
        ),
        expect_ops={"Softmax", "MatMul", "LayerNormalization"},
    )
    for name, f in F_.items():
        f.setdefault("outputs", ["logits"])
        f.setdefault("out_specs", logits)
        f.setdefault("dynamic", True)
        f.setdefault("fold", True)
        f["in_specs"] = pixel(f["image"])
    return F_


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def static_shape(spec, batch):
    return [batch if d == "batch" else d for d in spec["shape"]]


SEEDS = {  # weight family -> seed; the torchvision ViT forms share weights (same model, other exports)
    "tv-vit": 0, "postnorm": 1, "seqfirst": 2, "rmsnorm": 3, "einsum": 4, "deit": 5, "swin": 6, "meanpool": 7,
}


def family(name):
    if name.startswith(("vit-", "static-batch", "per-token-output")):
        return "tv-vit"
    return name.split("-")[0]


def reference_input(image):
    """One batch-2 input per image size, shared by the models of that size."""
    gen = torch.Generator().manual_seed(1000 + image)
    return torch.randn(BATCH, 3, image, image, generator=gen)


def export_one(name, f, out_dir):
    seed = SEEDS[family(name)]
    torch.manual_seed(seed)
    model = f["build"]().eval()
    x = reference_input(f["image"])
    # Reference outputs with grad enabled, like the export itself: params require grad, so
    # nn.MultiheadAttention / TransformerEncoderLayer stay on their slow (MatMul + Softmax) path
    # rather than the fused native fast path (which has no ONNX symbolic).
    ref = model(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    in_name = f["in_specs"][0]["name"]
    dyn = None
    if f["dynamic"]:
        dyn = {in_name: {0: "batch"}}
        for o in f["outputs"]:
            dyn[o] = {0: "batch"}
    buf = io.BytesIO()
    torch.onnx.export(
        model, (x,), buf, opset_version=f["opset"], input_names=[in_name], output_names=f["outputs"],
        dynamic_axes=dyn, do_constant_folding=f["fold"], training=torch.onnx.TrainingMode.EVAL,
    )
    data = buf.getvalue()
    m = onnx.load_from_string(data)
    onnx.checker.check_model(m)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    missing = f.get("expect_ops", set()) - set(ops)
    present = f.get("forbid_ops", set()) & set(ops)
    assert not missing, f"{name}: expected ops missing: {missing} (have {sorted(ops)})"
    assert not present, f"{name}: unexpected ops: {present}"
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node), f"{name}: custom-domain node"
    # Declared graph I/O shapes must be what we say they are.
    def dims(vi):
        return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]
    b = "batch" if f["dynamic"] else BATCH
    in_specs = [dict(s, shape=static_shape(s, b)) for s in f["in_specs"]]
    out_specs = [dict(s, shape=static_shape(s, b)) for s in f["out_specs"]]
    for s, vi in zip(in_specs, m.graph.input):
        assert s["name"] == vi.name and s["shape"] == dims(vi), (name, s, dims(vi))
    for s, vi, r in zip(out_specs, m.graph.output, ref):
        assert s["name"] == vi.name, (name, s["name"], vi.name)
        assert list(r.shape) == static_shape(s, BATCH), (name, s, r.shape)
        if dims(vi) != s["shape"]:
            s["declaredShape"] = dims(vi)

    with open(os.path.join(out_dir, f"{name}.onnx"), "wb") as fh:
        fh.write(data)
    in_file = f"input-{f['image']}x{f['image']}.npy"
    np.save(os.path.join(out_dir, in_file), x.numpy())
    refs = {}
    for oname, r in zip(f["outputs"], ref):
        fn = f"{name}.{oname}.npy"
        np.save(os.path.join(out_dir, fn), r.detach().numpy())
        refs[oname] = fn
    entry = dict(
        file=f"{name}.onnx", form=name, opset=f["opset"], seed=seed,
        batch="dynamic" if f["dynamic"] else "static", batchDimName="batch" if f["dynamic"] else None,
        constantFolding=f["fold"],
        **f["facts"],
        inputs=in_specs, outputs=out_specs,
        reference={"batch": BATCH, "inputs": {in_name: in_file}, "outputs": refs},
        sizeBytes=len(data), nodeCount=len(m.graph.node), opCounts=dict(sorted(ops.items())),
    )
    if entry["batch"] == "static":
        entry.pop("batchDimName")
    return entry, len(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", default="", help="comma-separated form names")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    all_forms = forms()
    names = [n for n in all_forms if not args.only or n in args.only.split(",")]
    manifest = {
        "generator": "scripts/export_forms.py",
        "torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
        "exporter": "torch.onnx.export (TorchScript), eval mode, CPU",
        "notes": [
            "Facts come from how each model was built in Python, not from prunec.",
            "tokens counts the special (prefix) tokens; special tokens come first on the token axis.",
            "Reference outputs were computed by torch with grad enabled (the exported code path).",
            "The torchvision ViT forms (vit-*, static-batch, per-token-output) share one set of weights "
            "(seed 0): the same model exported in different ways, so their logits references are equal.",
            "Fast path: in eval mode under torch.no_grad(), torch 1.13's nn.TransformerEncoderLayer and "
            "nn.MultiheadAttention take their fused fast path and the export fails (aten::_transformer_encoder_"
            "layer_fwd / aten::_native_multi_head_attention have no ONNX symbolic). The export runs with grad "
            "enabled (parameters require grad), which keeps the slow path: the graphs have MatMul + Softmax "
            "attention (asserted). seqfirst (batch_first=False) never takes the fast path.",
        ],
        "models": {},
    }
    total = 0
    for name in names:
        entry, size = export_one(name, all_forms[name], args.out)
        manifest["models"][name] = entry
        total += size
        print(f"{name:22s} {size:8d} B  nodes {entry['nodeCount']}")
    with open(os.path.join(args.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    print(f"total onnx {total} B")


if __name__ == "__main__":
    main()
