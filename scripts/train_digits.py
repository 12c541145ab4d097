#!/usr/bin/env python3
"""Train and export prunec's trained example model, examples/digits/ ("cluttered digits").

Task: a 64x64 grayscale canvas holds ONE full handwritten digit (scikit-learn's 8x8 digits,
upscaled x3 with nearest neighbour to 24x24) at a random position on the 8-px patch grid, plus
several fragments (random 3x3..5x5-pixel crops, also upscaled x3, on the same grid) of other digits
that never overlap it, plus light Gaussian noise. The label is the full digit. The answer sits in
9 of the 64 patches, so a good
token-pruning schedule (`after layer 2 keep 25% by cls-attn`) can drop most of the image.

The source digits are split (stratified 80/20, fixed seed) into train and test sources: training
examples are generated on the fly from train sources only; the committed test set and sample set
are generated from test sources only, with their own seeds.

Model: torchvision VisionTransformer(image_size=64, patch_size=8, ...) with a 1-channel conv_proj.
Training normalises the input inside the model; for export the normalisation is folded into
conv_proj, so the ONNX file is a plain torchvision ViT whose input `pixel_values` is float32
[batch_size, 1, 64, 64] = pixel / 255, and whose output is `logits` [batch_size, 10].

Writes to examples/digits/: model.onnx, test.prds, sample.prds, metrics.json, TRAINING.md
(and a PNG grid of samples to scratch/ for eyeballing). Dataset format (.prds): see write_prds.

Needs Debian 12's python3-torch, python3-torchvision, python3-onnx, python3-numpy, python3-sklearn.
Run from anywhere:  /usr/bin/python3 scripts/train_digits.py
    --measure N   time N training steps and exit (to size the run)
    --data-only   write only the PNG grid of samples (scratch/), no training
"""
import argparse
import json
import math
import os
import platform
import struct
import sys
import time
import zlib

import numpy as np
import onnx
import sklearn
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.models.vision_transformer import VisionTransformer

# ---------------------------------------------------------------------------------------------
# Settings (all of them; TRAINING.md and metrics.json are generated from these)
# ---------------------------------------------------------------------------------------------
TASK = dict(
    canvas=64,
    scale=3,  # source pixel -> 3x3 block (nearest neighbour): digit 24x24
    frag_count=(4, 6),  # fragments per image, inclusive range
    frag_size=(3, 5),  # fragment crop height/width in source pixels, inclusive range (9..15 px)
    frag_min_ink=0.25,  # a crop must have mean intensity >= this fraction of full ink
    digit_gain=(0.75, 1.0),  # per-image intensity multiplier of the digit
    frag_gain=(0.75, 1.0),  # per-fragment intensity multiplier
    noise_std=(0.0, 12.0),  # per-image std of additive Gaussian noise (0..255 scale), uniform
    pos_step=8,  # digit and fragment top-left corners are random multiples of this (px): the patch lattice
)
MODEL = dict(
    image_size=64,
    patch_size=8,  # 8x8 = 64 patches + CLS = 65 tokens
    num_layers=6,
    num_heads=4,
    hidden_dim=96,
    mlp_dim=192,
    num_classes=10,
)
TRAIN = dict(
    epochs=25,
    steps_per_epoch=100,
    batch_size=32,
    curriculum_steps=600,  # fragments per image ramp linearly from 0 to the full count over these steps
    shift_prob=0.5,  # augmentation: with this probability shift the source digit 1 source px left or right
    lr=1e-3,
    min_lr=1e-5,
    warmup_steps=100,
    weight_decay=0.05,
    betas=(0.9, 0.999),
    label_smoothing=0.1,
    grad_clip=1.0,
    threads=2,
)
SEEDS = dict(split=0, torch=0, train_data=1, test=2, sample=3)
N_TEST = 2000
N_SAMPLE = 8
TEST_SIZE = 0.2
OPSET = 17
# input normalisation used in training (folded into conv_proj for export): (x - MEAN) / STD
NORM_MEAN = 0.1
NORM_STD = 0.25
# informative: emulate `after layer 2 keep 25% by cls-attn` in torch on the test set
PRUNE_LAYER = 2
PRUNE_KEEP = 0.25
EVAL_EVERY_EPOCH = 500  # progress log: accuracy on the first 500 test examples after each epoch


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def load_sources():
    d = load_digits()
    imgs = np.rint(d.images * (255.0 / 16.0)).astype(np.float32)  # [1797, 8, 8], 0..255
    labels = d.target.astype(np.int64)
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=TEST_SIZE, stratify=labels, random_state=SEEDS["split"])
    return imgs, labels, np.sort(tr), np.sort(te)


def shift_source(img, sx):
    """Shift an 8x8 source digit sideways by sx = -1 or 1 source pixel, zero fill; unchanged if the
    column that would fall off holds ink (max >= 64), so a shift never cuts the digit. (No vertical
    shifts: the scikit-learn digits fill all 8 rows.)"""
    if (img[:, -1] if sx > 0 else img[:, 0]).max() >= 64:
        return img
    out = np.zeros_like(img)
    if sx > 0:
        out[:, 1:] = img[:, :-1]
    else:
        out[:, :-1] = img[:, 1:]
    return out


class Generator:
    """Makes cluttered-digit examples from one pool of source digits (train or test)."""

    def __init__(self, imgs, labels, pool, seed):
        self.imgs = imgs
        self.labels = labels
        self.pool = np.asarray(pool)
        self.rng = np.random.default_rng(seed)
        self.others = {c: self.pool[labels[self.pool] != c] for c in range(10)}

    def _up(self, a):
        s = TASK["scale"]
        return np.repeat(np.repeat(a, s, axis=0), s, axis=1)

    def example(self, src, frag_frac=1.0, shift_prob=0.0):
        """One uint8 64x64 image whose label is labels[src]. frag_frac and shift_prob: training only."""
        rng = self.rng
        C, s = TASK["canvas"], TASK["scale"]
        canvas = np.zeros((C, C), np.float32)
        img = self.imgs[src]
        if shift_prob > 0 and rng.random() < shift_prob:
            img = shift_source(img, 1 if rng.random() < 0.5 else -1)
        digit = self._up(img) * rng.uniform(*TASK["digit_gain"])
        D = digit.shape[0]
        ps = TASK["pos_step"]
        dy, dx = rng.integers(0, (C - D) // ps + 1, size=2) * ps
        canvas[dy:dy + D, dx:dx + D] = digit
        label = self.labels[src]
        others = self.others[label]
        nfrag = rng.integers(TASK["frag_count"][0], TASK["frag_count"][1] + 1)
        nfrag = int(math.floor(nfrag * frag_frac + 0.5))  # curriculum (training only)
        for _ in range(nfrag):
            j = others[rng.integers(len(others))]
            for _try in range(20):  # a crop with enough ink
                h, w = rng.integers(TASK["frag_size"][0], TASK["frag_size"][1] + 1, size=2)
                y0, x0 = rng.integers(0, 8 - h + 1), rng.integers(0, 8 - w + 1)
                crop = self.imgs[j, y0:y0 + h, x0:x0 + w]
                if crop.mean() >= TASK["frag_min_ink"] * 255:
                    break
            frag = self._up(crop) * rng.uniform(*TASK["frag_gain"])
            fh, fw = frag.shape
            for _try in range(50):  # a place that does not overlap the digit
                fy = rng.integers(0, (C - fh) // ps + 1) * ps
                fx = rng.integers(0, (C - fw) // ps + 1) * ps
                if fy + fh <= dy or fy >= dy + D or fx + fw <= dx or fx >= dx + D:
                    region = canvas[fy:fy + fh, fx:fx + fw]
                    np.maximum(region, frag, out=region)
                    break
        sigma = rng.uniform(*TASK["noise_std"])
        canvas += rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)
        box = (int(dy), int(dx), D)
        return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), int(label), box

    def batch(self, n, frag_frac=1.0, shift_prob=0.0):
        srcs = self.pool[self.rng.integers(len(self.pool), size=n)]
        x = np.empty((n, 1, TASK["canvas"], TASK["canvas"]), np.uint8)
        y = np.empty(n, np.int64)
        for i, s in enumerate(srcs):
            x[i, 0], y[i], _ = self.example(s, frag_frac, shift_prob)
        return x, y

    def fixed_set(self, n):
        """n examples cycling through a seeded permutation of the pool (each source ~equally often)."""
        order = self.rng.permutation(self.pool)
        x = np.empty((n, 1, TASK["canvas"], TASK["canvas"]), np.uint8)
        y = np.empty(n, np.uint8)
        boxes = []
        for i in range(n):
            x[i, 0], y[i], b = self.example(order[i % len(order)])
            boxes.append(b)
        return x, y, boxes


def write_prds(path, x, y, seed, description):
    """PRUNEDS1 | u32 LE header length | UTF-8 JSON header | N uint8 labels | N*C*H*W uint8 pixels (NCHW)."""
    n, c, h, w = x.shape
    header = {
        "n": int(n),
        "channels": int(c),
        "height": int(h),
        "width": int(w),
        "classes": 10,
        "labels": [str(i) for i in range(10)],
        "input": "float32 pixel/255, NCHW",
        "seed": seed,
        "description": description,
    }
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    with open(path, "wb") as f:
        f.write(b"PRUNEDS1")
        f.write(struct.pack("<I", len(hb)))
        f.write(hb)
        f.write(np.ascontiguousarray(y, dtype=np.uint8).tobytes())
        f.write(np.ascontiguousarray(x, dtype=np.uint8).tobytes())


def write_png(path, imgs, labels, cols=8, pad=2):
    """Grayscale PNG grid (stdlib only)."""
    n = len(imgs)
    rows = (n + cols - 1) // cols
    H, W = imgs.shape[-2:]
    grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad), 128, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = imgs[i].reshape(H, W)
    grid = np.kron(grid, np.ones((3, 3), np.uint8))  # x3 so it is easy to look at
    gh, gw = grid.shape
    raw = b"".join(b"\x00" + grid[r].tobytes() for r in range(gh))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", gw, gh, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))
    print(f"wrote {path}; labels row-major: {list(map(int, labels))}", flush=True)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def build_vit() -> VisionTransformer:
    torch.manual_seed(SEEDS["torch"])
    vit = VisionTransformer(**MODEL)
    p = MODEL["patch_size"]
    conv = nn.Conv2d(1, MODEL["hidden_dim"], kernel_size=p, stride=p)
    # torchvision's init for conv_proj: truncated normal, std sqrt(1 / fan_in)
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1.0 / (p * p)))
    nn.init.zeros_(conv.bias)
    vit.conv_proj = conv
    return vit


class Normalised(nn.Module):
    """Training-time wrapper: (pixel/255 - MEAN) / STD -> ViT. Folded away for export."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit((x - NORM_MEAN) / NORM_STD)


@torch.no_grad()
def fold_normalisation(vit: VisionTransformer) -> None:
    """conv(W, (x - m)/s) + b == conv(W/s, x) + (b - m/s * sum(W))."""
    conv = vit.conv_proj
    w = conv.weight
    conv.bias.sub_(NORM_MEAN / NORM_STD * w.sum(dim=(1, 2, 3)))
    conv.weight.div_(NORM_STD)


def to_input(x_uint8):
    return torch.from_numpy(x_uint8.astype(np.float32) / np.float32(255.0))


@torch.no_grad()
def predict(fn, x_uint8, bs=250):
    out = []
    for i in range(0, len(x_uint8), bs):
        out.append(fn(to_input(x_uint8[i:i + bs])))
    return torch.cat(out)


@torch.no_grad()
def pruned_forward(vit: VisionTransformer, x, layer, keep):
    """Torch emulation of `after layer L keep p by cls-attn`: score with layer L's own attention
    (CLS row, mean over heads), keep CLS + the top round-half-up(p * patches) patches (in their
    original order) of layer L's output, run the remaining layers. Returns (logits, kept idx)."""
    n = x.shape[0]
    h = vit._process_input(x)
    h = torch.cat([vit.class_token.expand(n, -1, -1), h], dim=1)
    h = h + vit.encoder.pos_embedding
    blocks = list(vit.encoder.layers)
    for blk in blocks[:layer]:
        h = blk(h)
    blk = blocks[layer]
    y = blk.ln_1(h)
    _, w = blk.self_attention(y, y, y, need_weights=True, average_attn_weights=True)
    h = blk(h)
    cls_row = w[:, 0, 1:]
    k = int(math.floor(cls_row.shape[1] * keep + 0.5))
    top = torch.topk(cls_row, k, dim=1).indices.sort(dim=1).values + 1  # token indices
    idx = torch.cat([torch.zeros(n, 1, dtype=torch.long), top], dim=1)
    h = torch.gather(h, 1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    for b in blocks[layer + 1:]:
        h = b(h)
    h = vit.encoder.ln(h)
    return vit.heads(h[:, 0]), top - 1


def digit_patches(box):
    dy, dx, D = box
    p, g = MODEL["patch_size"], MODEL["image_size"] // MODEL["patch_size"]
    return {r * g + c for r in range(dy // p, (dy + D - 1) // p + 1) for c in range(dx // p, (dx + D - 1) // p + 1)}


# ---------------------------------------------------------------------------------------------
def lr_at(step, total):
    if step < TRAIN["warmup_steps"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup_steps"]
    t = (step - TRAIN["warmup_steps"]) / max(1, total - TRAIN["warmup_steps"])
    return TRAIN["min_lr"] + 0.5 * (TRAIN["lr"] - TRAIN["min_lr"]) * (1 + math.cos(math.pi * t))


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, ".."))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(root, "examples", "digits"))
    ap.add_argument("--png", default=os.path.join(root, "scratch", "digits-samples.png"))
    ap.add_argument("--measure", type=int, default=0)
    ap.add_argument("--data-only", action="store_true")
    ap.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    ap.add_argument("--ckpt", default=os.path.join(root, "scratch", "digits-ckpt.pt"),
                    help="where to save the trained weights (before folding) and the training log")
    ap.add_argument("--from-ckpt", action="store_true", help="skip training: load --ckpt, evaluate, export")
    args = ap.parse_args()
    TRAIN["epochs"] = args.epochs
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    t_start = time.time()

    torch.set_num_threads(TRAIN["threads"])
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEEDS["torch"])
    np.random.seed(SEEDS["torch"])

    imgs, labels, tr, te = load_sources()
    print(f"sources: {len(tr)} train, {len(te)} test (disjoint: {len(set(tr) & set(te)) == 0})", flush=True)

    test_x, test_y, test_boxes = Generator(imgs, labels, te, SEEDS["test"]).fixed_set(N_TEST)
    sample_x, sample_y, _ = Generator(imgs, labels, te, SEEDS["sample"]).fixed_set(N_SAMPLE)
    desc = ("cluttered digits: one scikit-learn 8x8 digit (test sources only) upscaled x3 nearest to "
            "24x24 at a random position on the 8-px patch grid of a 64x64 canvas, 4-6 x3 fragments "
            "(3x3..5x5 source pixels) of other-class digits not overlapping it, light Gaussian noise; "
            "label = the full digit. Made by scripts/train_digits.py")
    if args.png:
        os.makedirs(os.path.dirname(args.png), exist_ok=True)
        gx, gy = Generator(imgs, labels, tr, 99).batch(24)
        write_png(args.png, np.concatenate([sample_x, gx]), np.concatenate([sample_y, gy]))
    if args.data_only:
        return 0

    vit = build_vit()
    model = Normalised(vit)
    nparams = sum(p.numel() for p in vit.parameters())
    print(f"model: {MODEL}, {nparams} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embedding" not in n and "class_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embedding" not in n and "class_token" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": TRAIN["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=TRAIN["lr"], betas=TRAIN["betas"])
    gen = Generator(imgs, labels, tr, SEEDS["train_data"])
    total = TRAIN["epochs"] * TRAIN["steps_per_epoch"]
    if args.measure:
        total = args.measure
    step = 0
    t_train = time.time()
    log = []
    for epoch in range(0 if args.from_ckpt else TRAIN["epochs"]):
        model.train()
        t0 = time.time()
        tl, tc, tn, tdata = 0.0, 0, 0, 0.0
        for _ in range(TRAIN["steps_per_epoch"]):
            td = time.time()
            xb, yb = gen.batch(TRAIN["batch_size"], min(1.0, step / TRAIN["curriculum_steps"]), TRAIN["shift_prob"])
            xb, yb = to_input(xb), torch.from_numpy(yb)
            tdata += time.time() - td
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=TRAIN["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
            opt.step()
            tl += loss.item() * len(yb)
            tc += int((logits.argmax(1) == yb).sum())
            tn += len(yb)
            step += 1
            if args.measure and step >= args.measure:
                dt = time.time() - t_train
                print(f"measure: {step} steps of {TRAIN['batch_size']} in {dt:.1f}s = {dt / step:.3f}s/step "
                      f"(data {tdata / step:.3f}s/step); epoch of {TRAIN['steps_per_epoch']} steps ~ "
                      f"{dt / step * TRAIN['steps_per_epoch']:.0f}s", flush=True)
                return 0
        model.eval()
        pred = predict(model, test_x[:EVAL_EVERY_EPOCH]).argmax(1).numpy()
        acc = float((pred == test_y[:EVAL_EVERY_EPOCH]).mean())
        rec = dict(epoch=epoch + 1, step=step, lr=opt.param_groups[0]["lr"], train_loss=tl / tn,
                   train_acc=tc / tn, test500_acc=acc, epoch_s=time.time() - t0, data_s=tdata)
        log.append(rec)
        print(f"epoch {epoch + 1:3d}/{TRAIN['epochs']} step {step:5d} lr {rec['lr']:.2e} loss {rec['train_loss']:.4f} "
              f"train_acc {rec['train_acc']:.4f} test500_acc {acc:.4f} ({rec['epoch_s']:.0f}s, data {tdata:.0f}s, "
              f"total {time.time() - t_start:.0f}s)", flush=True)
    train_wall = time.time() - t_train
    if args.from_ckpt:
        ck = torch.load(args.ckpt)
        model.load_state_dict(ck["state"])
        log, train_wall = ck["log"], ck["train_wall"]
        t_start -= train_wall  # total_wall_s then reads as for a run that trained
        print(f"loaded {args.ckpt} (trained in {train_wall:.0f}s)", flush=True)
    elif args.ckpt:
        os.makedirs(os.path.dirname(os.path.abspath(args.ckpt)), exist_ok=True)
        torch.save({"state": model.state_dict(), "log": log, "train_wall": train_wall}, args.ckpt)

    # ---- final evaluation (on the export form: normalisation folded into conv_proj) ----
    model.eval()
    with torch.no_grad():
        ref = predict(model, test_x)
    fold_normalisation(vit)
    vit.eval()
    logits = predict(vit, test_x)
    fold_err = float((logits - ref).abs().max())
    print(f"fold normalisation into conv_proj: max abs logit change {fold_err:.2e}", flush=True)
    pred = logits.argmax(1).numpy()
    correct = pred == test_y
    per_class = {str(c): float(correct[test_y == c].mean()) for c in range(10)}
    per_class_n = {str(c): int((test_y == c).sum()) for c in range(10)}
    conf = np.zeros((10, 10), int)
    for t, p in zip(test_y, pred):
        conf[t, p] += 1
    sample_logits = predict(vit, sample_x)
    sample_pred = sample_logits.argmax(1).numpy()
    top2 = torch.topk(logits, 2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    top2s = torch.topk(sample_logits, 2, dim=1).values
    margin_s = (top2s[:, 0] - top2s[:, 1]).numpy()
    # train accuracy on a fresh batch of 2000 examples from train sources (separate seed)
    trx, try_ = Generator(imgs, labels, tr, 1000).batch(2000)
    train_acc = float((predict(vit, trx).argmax(1).numpy() == try_).mean())

    # informative: torch emulation of `after layer 2 keep 25% by cls-attn`
    pl, kept = [], []
    for i in range(0, N_TEST, 250):
        lg, kp = pruned_forward(vit, to_input(test_x[i:i + 250]), PRUNE_LAYER, PRUNE_KEEP)
        pl.append(lg)
        kept.append(kp)
    pruned_pred = torch.cat(pl).argmax(1).numpy()
    kept = torch.cat(kept).numpy()
    cover = [len(digit_patches(b) & set(k.tolist())) / len(digit_patches(b)) for b, k in zip(test_boxes, kept)]

    # ---- export ----
    path = os.path.join(out, "model.onnx")
    dummy = to_input(sample_x[:2])
    torch.onnx.export(vit, dummy, path, opset_version=OPSET, input_names=["pixel_values"], output_names=["logits"],
                      dynamic_axes={"pixel_values": {0: "batch_size"}, "logits": {0: "batch_size"}},
                      do_constant_folding=True)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    size = os.path.getsize(path)
    print(f"wrote {path} ({size} bytes)", flush=True)

    write_prds(os.path.join(out, "test.prds"), test_x, test_y, SEEDS["test"], desc)
    write_prds(os.path.join(out, "sample.prds"), sample_x, sample_y, SEEDS["sample"], desc)

    metrics = {
        "task": "cluttered-digits",
        "test": {"n": N_TEST, "correct": int(correct.sum()), "accuracy": float(correct.mean()),
                 "per_class_accuracy": per_class, "per_class_n": per_class_n, "confusion": conf.tolist()},
        "train_accuracy_fresh_2000": train_acc,
        "sample_correct": int((sample_pred == sample_y).sum()),
        "sample_n": N_SAMPLE,
        "sample_predictions": sample_pred.tolist(),
        "first256_correct": int(correct[:256].sum()),
        "first256_n": 256,
        "first256_predictions": pred[:256].tolist(),
        "sample_logits": [[round(float(v), 6) for v in row] for row in sample_logits],
        "min_top2_logit_gap": {"sample": float(margin_s.min()), "first256": float(margin[:256].min()),
                               "test": float(margin.min())},
        "emulated_prune": {
            "spec": f"after layer {PRUNE_LAYER} keep {int(PRUNE_KEEP * 100)}% by cls-attn",
            "note": "torch emulation in scripts/train_digits.py (pruned_forward), not prunec output",
            "accuracy": float((pruned_pred == test_y).mean()),
            "agreement_with_dense": float((pruned_pred == pred).mean()),
            "mean_digit_patch_coverage": float(np.mean(cover)),
        },
        "fold_max_abs_logit_change": fold_err,
        "parameters": nparams,
        "model_bytes": size,
        "settings": {"task": TASK, "model": MODEL, "train": TRAIN, "seeds": SEEDS, "n_test": N_TEST,
                     "n_sample": N_SAMPLE, "source_test_fraction": TEST_SIZE, "source_split": [len(tr), len(te)],
                     "norm_mean": NORM_MEAN, "norm_std": NORM_STD, "opset": OPSET},
        "train_wall_s": round(train_wall, 1),
        "total_wall_s": round(time.time() - t_start, 1),
        "log": log,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
                     "sklearn": sklearn.__version__},
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    write_training_md(os.path.join(out, "TRAINING.md"), metrics, out)
    short = {k: metrics[k] for k in ("train_accuracy_fresh_2000", "sample_correct", "first256_correct", "emulated_prune",
                                     "min_top2_logit_gap", "train_wall_s", "total_wall_s")}
    short["test"] = {k: metrics["test"][k] for k in ("n", "correct", "accuracy", "per_class_accuracy")}
    print(json.dumps(short, indent=1), flush=True)
    return 0


def write_training_md(path, m, out):
    T, M, R, S = TASK, MODEL, TRAIN, SEEDS
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in ("model.onnx", "test.prds", "sample.prds")}
    t = m["test"]
    pc = " | ".join(f"{t['per_class_accuracy'][str(c)] * 100:.1f}" for c in range(10))
    pn = " | ".join(str(t["per_class_n"][str(c)]) for c in range(10))
    rows = "\n".join(f"| {r['epoch']} | {r['step']} | {r['lr']:.2e} | {r['train_loss']:.4f} | {r['train_acc'] * 100:.1f} | "
                     f"{r['test500_acc'] * 100:.1f} | {r['epoch_s']:.0f} |" for r in m["log"])
    ep = m["emulated_prune"]
    D = 8 * T["scale"]
    pos = list(range(0, T["canvas"] - D + 1, T["pos_step"]))
    positions, npos = ", ".join(map(str, pos)), len(pos)
    gap = min(m["min_top2_logit_gap"]["sample"], m["min_top2_logit_gap"]["first256"])
    gap_note = (", far above float differences between runtimes (about 1e-6 here), so none of these argmaxes can flip."
                if gap > 1e-3 else "; that is small enough that a runtime's rounding could flip one of these argmaxes.")
    text = f"""# digits: prunec's trained example model ("cluttered digits")

A small torchvision `VisionTransformer`, really trained, on a task where the answer sits in a small
part of the image: a 64x64 grayscale canvas holds one full handwritten digit plus fragments of
other digits, and the label is the full digit. Written by `scripts/train_digits.py`; everything
below (numbers included) is generated by that script.

**Dense test accuracy: {t['accuracy'] * 100:.2f}% ({t['correct']}/{t['n']})** on examples built only from
digits the model never saw in training. Train accuracy (2000 fresh examples from train digits):
{m['train_accuracy_fresh_2000'] * 100:.2f}%.

| file | what |
|---|---|
| `model.onnx` | the model, {sizes['model.onnx']:,} bytes, opset {OPSET}; input `pixel_values` float32 `[batch_size, 1, 64, 64]` = pixel / 255, output `logits` float32 `[batch_size, 10]` |
| `test.prds` | the test set: {t['n']} examples from test digits only (seed {S['test']}), {sizes['test.prds']:,} bytes |
| `sample.prds` | 8 examples from test digits only (seed {S['sample']}), {sizes['sample.prds']:,} bytes |
| `metrics.json` | accuracies, per-class accuracy, confusion matrix, predictions the tests compare against, every setting, the training log |

## Task

- Source digits: scikit-learn's bundled `load_digits()` (1797 images, 8x8, values 0..16, scaled to
  0..255 and rounded). Split stratified {int((1 - TEST_SIZE) * 100)}/{int(TEST_SIZE * 100)} by source image
  (`train_test_split(..., test_size={TEST_SIZE}, stratify=labels, random_state={S['split']})`):
  {m['settings']['source_split'][0]} train sources, {m['settings']['source_split'][1]} test sources, disjoint.
  Training examples come only from train sources, `test.prds` and `sample.prds` only from test sources
  (digit and fragments alike).
- Canvas {T['canvas']}x{T['canvas']}, uint8. The labelled digit is upscaled x{T['scale']} with **nearest
  neighbour** (every source pixel becomes a {T['scale']}x{T['scale']} block: 24x24 px), multiplied by a gain
  uniform in {list(T['digit_gain'])}, and placed with its top-left corner at a uniformly random point of a
  {T['pos_step']}-px lattice (x and y each in {positions}: {npos}x{npos} positions), i.e. on the 8-px patch grid,
  so it covers exactly 3x3 = 9 of the 64 patches (14%).
- Clutter: {T['frag_count'][0]}..{T['frag_count'][1]} fragments (uniform count). Each is a crop of
  {T['frag_size'][0]}..{T['frag_size'][1]} x {T['frag_size'][0]}..{T['frag_size'][1]} source pixels (height and width drawn
  independently) from a random source digit of a *different* class (same split), re-drawn until its mean
  intensity is at least {T['frag_min_ink']} of full ink (20 tries), upscaled x{T['scale']} the same way (9..15 px),
  gain uniform in {list(T['frag_gain'])}, placed on the same {T['pos_step']}-px lattice anywhere that does not overlap
  the digit's 24x24 box (50 tries, else dropped); fragments may overlap each other (pixel-wise max).
- Noise: additive Gaussian, per-image standard deviation uniform in {list(T['noise_std'])} (on the 0..255
  scale), then rounded and clipped to uint8.
- Why a lattice and not any pixel offset: the patch embedding is linear, so a digit at an arbitrary pixel phase
  looks different to every patch, and on 2 shared CPU cores the ViT learnt far too slowly. Measured while designing
  (same model, batch 32, lr 1e-3): clean digits at any pixel offset, 38% running train accuracy after 300 steps;
  on a 4-px lattice, 82%. With full clutter, a 4-px lattice reached only 85% test accuracy after 1300 steps (run
  stopped), the 8-px lattice 87% after 400. Digit and fragments share the lattice, so patch phase is no cue;
  what the model must do is find which 3x3 block of patches holds a whole digit and read it.

## Model

`torchvision.models.vision_transformer.VisionTransformer(image_size={M['image_size']}, patch_size={M['patch_size']},
num_layers={M['num_layers']}, num_heads={M['num_heads']}, hidden_dim={M['hidden_dim']}, mlp_dim={M['mlp_dim']},
num_classes={M['num_classes']})` (CLS token, torchvision's default; 64 patches + CLS = 65 tokens), with
`conv_proj` replaced by `Conv2d(1, {M['hidden_dim']}, kernel_size={M['patch_size']}, stride={M['patch_size']})`
(truncated-normal init, std sqrt(1/64), zero bias, as torchvision does). {m['parameters']:,} parameters.
Training feeds `(pixel/255 - {NORM_MEAN}) / {NORM_STD}`; for export that normalisation is folded into `conv_proj`
(weight / {NORM_STD}, bias - {NORM_MEAN}/{NORM_STD} * sum(weight); max logit change {m['fold_max_abs_logit_change']:.1e}), so the
exported graph is a plain torchvision ViT whose input is pixel / 255.

Export: `torch.onnx.export(vit, x, ..., opset_version={OPSET}, input_names=["pixel_values"],
output_names=["logits"], dynamic_axes={{"pixel_values": {{0: "batch_size"}}, "logits": {{0: "batch_size"}}}},
do_constant_folding=True)` in eval mode (TorchScript exporter), checked with `onnx.checker`.

## Training

- Seeds: `torch.manual_seed({S['torch']})` and `np.random.seed({S['torch']})` (model init), training data generator
  `np.random.default_rng({S['train_data']})`, test set {S['test']}, sample set {S['sample']}, source split {S['split']}.
  `torch.set_num_threads({R['threads']})`, `torch.use_deterministic_algorithms(True)`.
- Examples generated on the fly from train sources, batch {R['batch_size']}, {R['epochs']} epochs x {R['steps_per_epoch']} steps =
  {R['epochs'] * R['steps_per_epoch']} steps ({R['epochs'] * R['steps_per_epoch'] * R['batch_size']:,} examples, each freshly generated).
- Augmentation: with probability {R['shift_prob']} the source digit is shifted one source pixel left or right
  (zero fill; skipped if the column that would fall off has ink, which is rare), so strokes move 3 px within the
  digit's patches. No vertical shifts: the scikit-learn digits fill all 8 rows.
- Curriculum: the number of fragments per training image is scaled by min(1, step / {R['curriculum_steps']}) (rounded
  half up), i.e. clean digits at first, full clutter from step {R['curriculum_steps']} on. Evaluation always uses full clutter.
- AdamW (betas {list(R['betas'])}, weight decay {R['weight_decay']} on weight matrices only; none on biases,
  LayerNorms, CLS token, position embedding), peak lr {R['lr']}, linear warmup {R['warmup_steps']} steps, cosine
  decay to {R['min_lr']}; cross-entropy with label smoothing {R['label_smoothing']}; gradient clipping at norm {R['grad_clip']}.
  Beyond the shift, the generator's random positions, gains, clutter and noise are the only augmentation.
- Wall time: training {m['train_wall_s'] / 60:.1f} min, whole script (data, training, evaluation, export)
  {m['total_wall_s'] / 60:.1f} min, on 2 CPU cores
  shared with other work (per-epoch times below vary with that load).

| epoch | step | lr | train loss | train acc % (running) | test acc % (first 500) | s |
|---|---|---|---|---|---|---|
{rows}

## Results (torch, exported weights)

- Test ({t['n']} examples): **{t['accuracy'] * 100:.2f}%**; train (2000 fresh): {m['train_accuracy_fresh_2000'] * 100:.2f}%.
- Per-class test accuracy (%):

| class | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |
|---|---|---|---|---|---|---|---|---|---|---|
| acc | {pc} |
| n | {pn} |

- Sample set: {m['sample_correct']}/8 correct; first 256 test examples: {m['first256_correct']}/256. `test/digits-data.test.ts`
  runs `model.onnx` on onnxruntime-node and checks it gets exactly these predictions. Smallest gap between the
  top two logits: {m['min_top2_logit_gap']['sample']:.3f} (sample), {m['min_top2_logit_gap']['first256']:.3f} (first 256){gap_note}
- Informative, not prunec output: a torch emulation of `{ep['spec']}` (score with layer 2's own head-averaged
  CLS attention row, keep CLS + the top 16 of 64 patches, run layers 3..5 on 17 tokens) gets
  {ep['accuracy'] * 100:.2f}% on the test set ({ep['agreement_with_dense'] * 100:.1f}% agreement with the dense model); on
  average {ep['mean_digit_patch_coverage'] * 100:.1f}% of the patches the digit touches are among the kept ones.

## Dataset files (`.prds`)

bytes 0..7 ASCII `PRUNEDS1`; bytes 8..11 uint32 little-endian H; H bytes UTF-8 JSON header (`n`, `channels` 1,
`height` 64, `width` 64, `classes` 10, `labels` "0".."9", `input` "float32 pixel/255, NCHW", `seed`,
`description`); N uint8 labels; N x 1 x 64 x 64 uint8 pixels (NCHW). Feed the model `pixel / 255` as float32.

## How to regenerate

```
apt-get install python3-torch python3-torchvision python3-onnx python3-sklearn   # Debian 12
/usr/bin/python3 scripts/train_digits.py          # trains (about {m['train_wall_s'] / 60:.0f} min here) and writes examples/digits/
```

Versions used: Python {m['versions']['python']}, torch {m['versions']['torch']}, torchvision {m['versions']['torchvision']},
onnx {m['versions']['onnx']}, numpy {m['versions']['numpy']}, scikit-learn {m['versions'].get('sklearn', '?')}. The datasets are
reproducible from the seeds; the trained weights are deterministic on one setup but may differ across CPUs or
library versions. Options: `--measure N` times N steps and exits; `--data-only` writes only the sample PNG grid;
`--from-ckpt` re-evaluates and re-exports saved weights (`scratch/digits-ckpt.pt`) without training.
Python is only needed to regenerate the model; prunec never runs it.
"""
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
