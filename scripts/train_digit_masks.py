#!/usr/bin/env python3
"""Train and export prunec's dense-output example model, examples/digit-masks/ ("digit masks").

Task: the same cluttered-digits canvas as scripts/train_digits.py (imported from it, unchanged: a
64x64 canvas with ONE full digit, 24x24 px on the 8-px patch grid so it covers 3x3 patches, plus
fragments of other digits that never overlap it, plus noise), but labelled per patch: class 1 if
the patch is one of the 9 patches under the full digit's 24x24 box, 0 otherwise (background and
fragments). Fragments are what makes this more than "where is the ink".

Model: torchvision VisionTransformer with the digits model's sizes and a 1-channel conv_proj; the
head Linear(hidden, 2) is applied to EVERY patch token after the encoder's final LayerNorm (the CLS
row is dropped: x[:, 1:]). Training normalises inside the model; for export the normalisation is
folded into conv_proj (train_digits.fold_normalisation). ONNX: input `pixel_values` float32
[batch_size, 1, 64, 64] = pixel / 255, output `logits` float32 [batch_size, 64, 2].

Metric: mIoU over the 2 classes, each class's IoU = |pred == c and label == c| / |pred == c or
label == c| counted over all patches of the whole test set; also per-class IoU and patch accuracy.

Writes to examples/digit-masks/: model.onnx, test.prds, sample.prds (per-patch labels: header
"targets": "patches", "patches": 64), metrics.json, TRAINING.md (and a PNG grid to scratch/).

Needs Debian 12's python3-torch, python3-torchvision, python3-onnx, python3-numpy, python3-sklearn.
Run from anywhere:  /usr/bin/python3 scripts/train_digit_masks.py
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

sys.dont_write_bytecode = True  # importing train_digits must not leave scripts/__pycache__ behind
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer  # noqa: E402

import train_digits as digits  # noqa: E402  (the generator, source split, folding: shared, not copied)

TASK = digits.TASK
MODEL = dict(digits.MODEL, num_classes=2)  # num_classes only sizes torchvision's head, which is replaced
GRID = MODEL["image_size"] // MODEL["patch_size"]  # 8
PATCHES = GRID * GRID  # 64
CLASSES = ["background", "digit"]
TRAIN = dict(
    epochs=4,
    steps_per_epoch=100,
    batch_size=32,
    curriculum_steps=150,  # fragments per image ramp linearly from 0 to the full count over these steps
    shift_prob=0.5,  # as train_digits: shift the source digit 1 source px left or right (box unchanged)
    lr=1e-3,
    min_lr=1e-5,
    warmup_steps=30,
    weight_decay=0.05,
    betas=(0.9, 0.999),
    grad_clip=1.0,
    threads=2,
)
# own seeds, none shared with examples/digits (2 and 3 made its test and sample sets)
SEEDS = dict(split=digits.SEEDS["split"], torch=0, train_data=11, test=12, sample=13, train_eval=14)
N_TEST = 1000
N_SAMPLE = 8
N_FIRST = 16  # predicted classes per patch of the first N_FIRST test examples go into metrics.json
EVAL_EVERY_EPOCH = 250  # progress log: mIoU on the first 250 test examples after each epoch
OPSET = 17


# ---------------------------------------------------------------------------------------------
# Data: the digits generator, labels from the digit's box
# ---------------------------------------------------------------------------------------------
def box_mask(box):
    """uint8 [64]: 1 for the patches under the digit's 24x24 box (row-major over the 8x8 grid)."""
    m = np.zeros(PATCHES, np.uint8)
    m[sorted(digits.digit_patches(box))] = 1
    return m


def train_batch(gen, n, frag_frac, shift_prob):
    """Like digits.Generator.batch (same draws, same order), with per-patch masks from the boxes."""
    srcs = gen.pool[gen.rng.integers(len(gen.pool), size=n)]
    x = np.empty((n, 1, TASK["canvas"], TASK["canvas"]), np.uint8)
    y = np.empty((n, PATCHES), np.uint8)
    for i, s in enumerate(srcs):
        x[i, 0], _, box = gen.example(s, frag_frac, shift_prob)
        y[i] = box_mask(box)
    return x, y


def fixed_set(imgs, labels, pool, seed, n):
    x, _, boxes = digits.Generator(imgs, labels, pool, seed).fixed_set(n)
    return x, np.stack([box_mask(b) for b in boxes])


def write_prds(path, x, y, seed, description):
    """PRUNEDS1 | u32 LE header length | UTF-8 JSON header | N*64 uint8 patch labels (row-major over
    the 8x8 patch grid, example by example) | N*C*H*W uint8 pixels (NCHW)."""
    n, c, h, w = x.shape
    assert y.shape == (n, PATCHES) and y.max() < len(CLASSES)
    header = {
        "n": int(n),
        "channels": int(c),
        "height": int(h),
        "width": int(w),
        "classes": len(CLASSES),
        "labels": CLASSES,
        "targets": "patches",
        "patches": PATCHES,
        "patch_grid": [GRID, GRID],
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


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class PatchSegmenter(nn.Module):
    """torchvision ViT encoder; vit.heads (Linear(hidden, 2)) on every patch token, CLS row dropped."""

    def __init__(self, vit, normalise):
        super().__init__()
        self.vit = vit
        self.normalise = normalise

    def forward(self, x):
        if self.normalise:
            x = (x - digits.NORM_MEAN) / digits.NORM_STD
        vit = self.vit
        h = vit._process_input(x)
        h = torch.cat([vit.class_token.expand(h.shape[0], -1, -1), h], dim=1)
        h = vit.encoder(h)  # + pos_embedding, layers, final LayerNorm
        return vit.heads(h[:, 1:])


def build_vit() -> VisionTransformer:
    torch.manual_seed(SEEDS["torch"])
    vit = VisionTransformer(**MODEL)
    p = MODEL["patch_size"]
    conv = nn.Conv2d(1, MODEL["hidden_dim"], kernel_size=p, stride=p)
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1.0 / (p * p)))  # as torchvision and train_digits
    nn.init.zeros_(conv.bias)
    vit.conv_proj = conv
    vit.heads = nn.Sequential()
    vit.heads.add_module("head", nn.Linear(MODEL["hidden_dim"], len(CLASSES)))  # torchvision's default init
    return vit


@torch.no_grad()
def predict(fn, x_uint8, bs=250):
    return torch.cat([fn(digits.to_input(x_uint8[i:i + bs])) for i in range(0, len(x_uint8), bs)])


def seg_metrics(pred, y):
    """pred, y: int arrays [n, 64]. IoU per class over all patches; classes with an empty union are
    left out of the mean (and get iou null). Counts included so runtimes can be compared exactly."""
    per = []
    for c in range(len(CLASSES)):
        inter = int(((pred == c) & (y == c)).sum())
        union = int(((pred == c) | (y == c)).sum())
        per.append({"class": CLASSES[c], "intersection": inter, "union": union,
                    "iou": inter / union if union else None})
    ious = [p["iou"] for p in per if p["iou"] is not None]
    correct = int((pred == y).sum())
    return {"n": int(pred.shape[0]), "patches": int(pred.size), "miou": float(np.mean(ious)), "per_class": per,
            "patch_correct": correct, "patch_accuracy": correct / pred.size,
            "examples_all_patches_correct": int((pred == y).all(axis=1).sum())}


def lr_at(step, total):
    if step < TRAIN["warmup_steps"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup_steps"]
    t = (step - TRAIN["warmup_steps"]) / max(1, total - TRAIN["warmup_steps"])
    return TRAIN["min_lr"] + 0.5 * (TRAIN["lr"] - TRAIN["min_lr"]) * (1 + math.cos(math.pi * t))


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, ".."))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(root, "examples", "digit-masks"))
    ap.add_argument("--png", default=os.path.join(root, "scratch", "digit-masks-samples.png"))
    ap.add_argument("--measure", type=int, default=0)
    ap.add_argument("--data-only", action="store_true")
    ap.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    ap.add_argument("--ckpt", default=os.path.join(root, "scratch", "digit-masks-ckpt.pt"),
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

    imgs, labels, tr, te = digits.load_sources()
    test_x, test_y = fixed_set(imgs, labels, te, SEEDS["test"], N_TEST)
    sample_x, sample_y = fixed_set(imgs, labels, te, SEEDS["sample"], N_SAMPLE)
    desc = ("digit masks: the cluttered-digits canvas of scripts/train_digits.py (one scikit-learn 8x8 digit, "
            "test sources only, x3 nearest to 24x24 on the 8-px patch grid of a 64x64 canvas, 4-6 x3 fragments "
            "of other-class digits not overlapping it, light Gaussian noise); per-patch label, row-major over the "
            "8x8 patch grid: 1 = under the full digit's 24x24 box, 0 = otherwise. "
            "Made by scripts/train_digit_masks.py")
    if args.png:
        os.makedirs(os.path.dirname(args.png), exist_ok=True)
        shown = sample_x.copy()
        for i in range(N_SAMPLE):  # outline-free marker: brighten the labelled patches' top-left pixel
            for p in np.flatnonzero(sample_y[i]):
                r, c = divmod(int(p), GRID)
                shown[i, 0, r * 8, c * 8] = 255
        digits.write_png(args.png, shown, [int(m.sum()) for m in sample_y])
    if args.data_only:
        return 0

    vit = build_vit()
    model = PatchSegmenter(vit, normalise=True)
    nparams = sum(p.numel() for p in vit.parameters())
    print(f"model: {MODEL} with a per-patch head, {nparams} parameters", flush=True)
    is_decay = lambda n, p: p.ndim >= 2 and "pos_embedding" not in n and "class_token" not in n  # noqa: E731
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in model.named_parameters() if is_decay(n, p)], "weight_decay": TRAIN["weight_decay"]},
         {"params": [p for n, p in model.named_parameters() if not is_decay(n, p)], "weight_decay": 0.0}],
        lr=TRAIN["lr"], betas=TRAIN["betas"])
    gen = digits.Generator(imgs, labels, tr, SEEDS["train_data"])
    total = args.measure or TRAIN["epochs"] * TRAIN["steps_per_epoch"]
    step = 0
    t_train = time.time()
    log = []
    for epoch in range(0 if args.from_ckpt else TRAIN["epochs"]):
        model.train()
        t0 = time.time()
        tl, tc, tn, tdata = 0.0, 0, 0, 0.0
        for _ in range(TRAIN["steps_per_epoch"]):
            td = time.time()
            xb, yb = train_batch(gen, TRAIN["batch_size"], min(1.0, step / TRAIN["curriculum_steps"]),
                                 TRAIN["shift_prob"])
            xb, yb = digits.to_input(xb), torch.from_numpy(yb.astype(np.int64))
            tdata += time.time() - td
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total)
            logits = model(xb)
            loss = F.cross_entropy(logits.reshape(-1, len(CLASSES)), yb.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
            opt.step()
            tl += loss.item() * yb.numel()
            tc += int((logits.argmax(-1) == yb).sum())
            tn += yb.numel()
            step += 1
            if args.measure and step >= args.measure:
                dt = time.time() - t_train
                print(f"measure: {step} steps of {TRAIN['batch_size']} in {dt:.1f}s = {dt / step:.3f}s/step "
                      f"(data {tdata / step:.3f}s/step); epoch of {TRAIN['steps_per_epoch']} steps ~ "
                      f"{dt / step * TRAIN['steps_per_epoch']:.0f}s; loss {loss.item():.4f}", flush=True)
                return 0
        model.eval()
        m500 = seg_metrics(predict(model, test_x[:EVAL_EVERY_EPOCH]).argmax(-1).numpy(), test_y[:EVAL_EVERY_EPOCH])
        rec = dict(epoch=epoch + 1, step=step, lr=opt.param_groups[0]["lr"], train_loss=tl / tn,
                   train_patch_acc=tc / tn, test250_miou=m500["miou"], epoch_s=time.time() - t0, data_s=tdata)
        log.append(rec)
        print(f"epoch {epoch + 1:3d}/{TRAIN['epochs']} step {step:5d} lr {rec['lr']:.2e} loss {rec['train_loss']:.4f} "
              f"train_patch_acc {rec['train_patch_acc']:.4f} test250_miou {m500['miou']:.4f} "
              f"({rec['epoch_s']:.0f}s, data {tdata:.0f}s, total {time.time() - t_start:.0f}s)", flush=True)
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
    ref = predict(model, test_x)
    digits.fold_normalisation(vit)
    model.normalise = False
    logits = predict(model, test_x)
    fold_err = float((logits - ref).abs().max())
    print(f"fold normalisation into conv_proj: max abs logit change {fold_err:.2e}", flush=True)
    pred = logits.argmax(-1).numpy()
    test = seg_metrics(pred, test_y)
    gap = (logits[..., 1] - logits[..., 0]).abs()
    sample_logits = predict(model, sample_x)
    sample_pred = sample_logits.argmax(-1).numpy()
    trx, try_ = train_batch(digits.Generator(imgs, labels, tr, SEEDS["train_eval"]), 1000, 1.0, 0.0)
    train_fresh = seg_metrics(predict(model, trx).argmax(-1).numpy(), try_)

    # ---- export ----
    path = os.path.join(out, "model.onnx")
    torch.onnx.export(model, digits.to_input(sample_x[:2]), path, opset_version=OPSET, input_names=["pixel_values"],
                      output_names=["logits"],
                      dynamic_axes={"pixel_values": {0: "batch_size"}, "logits": {0: "batch_size"}},
                      do_constant_folding=True)
    onnx.checker.check_model(onnx.load(path))
    size = os.path.getsize(path)
    print(f"wrote {path} ({size} bytes)", flush=True)
    write_prds(os.path.join(out, "test.prds"), test_x, test_y, SEEDS["test"], desc)
    write_prds(os.path.join(out, "sample.prds"), sample_x, sample_y, SEEDS["sample"], desc)

    metrics = {
        "task": "digit-masks",
        "metric": ("IoU of class c = |pred == c and label == c| / |pred == c or label == c| over all patches of the set "
                   "(n x 64); mIoU = mean over the classes whose union is not empty; patch accuracy = "
                   "|pred == label| / (n x 64); pred = argmax of the 2 logits (first index wins a tie)"),
        "test": test,
        "train_fresh_1000": train_fresh,
        "sample": seg_metrics(sample_pred, sample_y),
        "sample_predictions": sample_pred.tolist(),
        "sample_logits": [[[round(float(v), 6) for v in row] for row in ex] for ex in sample_logits],
        "first_predictions_n": N_FIRST,
        "first_predictions": pred[:N_FIRST].tolist(),
        "min_logit_gap": {"test": float(gap.min()),
                          "sample": float((sample_logits[..., 1] - sample_logits[..., 0]).abs().min())},
        "test_patches_with_logit_gap_below_1e-3": int((gap < 1e-3).sum()),
        "fold_max_abs_logit_change": fold_err,
        "parameters": nparams,
        "model_bytes": size,
        "settings": {"task": TASK, "model": MODEL, "head": f"Linear({MODEL['hidden_dim']}, 2) on every patch token",
                     "classes": CLASSES, "train": TRAIN, "seeds": SEEDS, "n_test": N_TEST, "n_sample": N_SAMPLE,
                     "source_split": [len(tr), len(te)], "norm_mean": digits.NORM_MEAN,
                     "norm_std": digits.NORM_STD, "opset": OPSET},
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
    print(json.dumps({k: metrics[k] for k in ("test", "train_fresh_1000", "min_logit_gap", "train_wall_s",
                                              "total_wall_s")}, indent=1), flush=True)
    return 0


def write_training_md(path, m, out):
    T, M, R, S = TASK, MODEL, TRAIN, SEEDS
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in ("model.onnx", "test.prds", "sample.prds")}
    t, tf = m["test"], m["train_fresh_1000"]
    pct = lambda v: f"{v * 100:.2f}%"  # noqa: E731
    iou_rows = "\n".join(f"| {c} | {p['class']} | {pct(p['iou'])} | {p['intersection']:,} | {p['union']:,} |"
                         for c, p in enumerate(t["per_class"]))
    rows = "\n".join(f"| {r['epoch']} | {r['step']} | {r['lr']:.2e} | {r['train_loss']:.4f} | "
                     f"{r['train_patch_acc'] * 100:.2f} | {r['test250_miou'] * 100:.2f} | {r['epoch_s']:.0f} |"
                     for r in m["log"])
    gap = min(m["min_logit_gap"]["test"], m["min_logit_gap"]["sample"])
    gap_note = ("far above float differences between runtimes (about 1e-6 here), so no patch's argmax can flip"
                if gap > 1e-3 else
                (lambda k: f"{k} test patch{'' if k == 1 else 'es'} {'has' if k == 1 else 'have'} a gap below 1e-3; "
                 "`prunec eval` on onnxruntime-node still gets every count above exactly (test/digit-masks.test.ts), "
                 "but another runtime's rounding could flip such a patch")(m["test_patches_with_logit_gap_below_1e-3"]))
    steps = R["epochs"] * R["steps_per_epoch"]
    text = f"""# digit-masks: prunec's dense-output example model (per-patch "digit masks")

A small torchvision `VisionTransformer`, really trained, whose output is one row per patch: on the
cluttered-digits canvas of [`examples/digits`](../digits/TRAINING.md) it tells, for each of the 64
patches, whether the patch lies under the one full digit (class 1, `digit`) or not (class 0,
`background`: empty canvas, noise and fragments of other digits). It is a yardstick for pruning
schedules on models that need every token at the output. Written by `scripts/train_digit_masks.py`;
everything below (numbers included) is generated by that script.

**Dense test mIoU: {pct(t['miou'])}** (IoU background {pct(t['per_class'][0]['iou'])}, digit
{pct(t['per_class'][1]['iou'])}; patch accuracy {pct(t['patch_accuracy'])}, {t['patch_correct']:,}/{t['patches']:,}
patches; {t['examples_all_patches_correct']}/{t['n']} examples with every patch right) on {t['n']} examples
built only from digits the model never saw in training. Train (1000 fresh examples from train digits):
mIoU {pct(tf['miou'])}, patch accuracy {pct(tf['patch_accuracy'])}.

| file | what |
|---|---|
| `model.onnx` | the model, {sizes['model.onnx']:,} bytes, opset {OPSET}; input `pixel_values` float32 `[batch_size, 1, 64, 64]` = pixel / 255, output `logits` float32 `[batch_size, 64, 2]` (patch-major: row r*8+c is the patch at grid row r, column c) |
| `test.prds` | the test set: {t['n']} examples from test digits only (seed {S['test']}), per-patch labels, {sizes['test.prds']:,} bytes |
| `sample.prds` | {N_SAMPLE} examples from test digits only (seed {S['sample']}), per-patch labels, {sizes['sample.prds']:,} bytes |
| `metrics.json` | mIoU, per-class IoU with their counts, patch accuracy, the predicted class of every patch of the sample set and of the first {m['first_predictions_n']} test examples (the tests compare against them), every setting, the training log |

## Task

- The canvas is exactly `scripts/train_digits.py`'s, made by its own code (`Generator`, imported, not
  copied): the same source split ({m['settings']['source_split'][0]} train, {m['settings']['source_split'][1]} test
  scikit-learn digits, stratified, seed {S['split']}), one full digit upscaled x{T['scale']} (24x24 px) on the
  {T['pos_step']}-px patch lattice, {T['frag_count'][0]}..{T['frag_count'][1]} fragments of other-class digits
  that never overlap it, per-image Gaussian noise with std uniform in {list(T['noise_std'])}. See
  [`examples/digits/TRAINING.md`](../digits/TRAINING.md#task) for every detail.
- Labels: one byte per patch, row-major over the 8x8 grid of 8x8-px patches: 1 for the 3x3 = 9
  patches under the full digit's 24x24 box (whether or not they hold ink: a digit's corner patches are
  often blank), 0 for the other 55. Fragments are 9..15 px, so one can touch up to 2x2 patches with ink
  as bright as the digit's: telling a whole digit from pieces of others takes context, not a pixel test.
  Every example has exactly 9 `digit` patches (14%).

## Metric

IoU of class c = |patches predicted c and labelled c| / |patches predicted c or labelled c|, counted
over **all patches of the whole set** (n x 64, not averaged per image); **mIoU** = the mean of the two
classes' IoU (a class whose union is empty would be left out; none is). Patch accuracy = patches
predicted right / (n x 64). The prediction is the argmax of a patch's 2 logits (first index wins a
tie). `prunec eval` computes the same from the same counts.

## Model

`torchvision.models.vision_transformer.VisionTransformer(image_size={M['image_size']}, patch_size={M['patch_size']},
num_layers={M['num_layers']}, num_heads={M['num_heads']}, hidden_dim={M['hidden_dim']}, mlp_dim={M['mlp_dim']})`, the
digits model's sizes (CLS token; 64 patches + CLS = 65 tokens), `conv_proj` replaced by
`Conv2d(1, {M['hidden_dim']}, kernel_size={M['patch_size']}, stride={M['patch_size']})` (truncated-normal init,
std sqrt(1/64), zero bias). The head `heads.head = Linear({M['hidden_dim']}, 2)` is applied to every patch
token after the encoder's final LayerNorm, the CLS row dropped: `heads(encoder(tokens)[:, 1:])`.
{m['parameters']:,} parameters. Training feeds `(pixel/255 - {digits.NORM_MEAN}) / {digits.NORM_STD}`; for export
that is folded into `conv_proj` (train_digits's `fold_normalisation`; max logit change
{m['fold_max_abs_logit_change']:.1e}), so the graph's input is pixel / 255.

Export: `torch.onnx.export(model, x, ..., opset_version={OPSET}, input_names=["pixel_values"],
output_names=["logits"], dynamic_axes={{"pixel_values": {{0: "batch_size"}}, "logits": {{0: "batch_size"}}}},
do_constant_folding=True)` in eval mode (TorchScript exporter), checked with `onnx.checker`.

## Training

- Seeds: `torch.manual_seed({S['torch']})` and `np.random.seed({S['torch']})` (model init), training data
  `np.random.default_rng({S['train_data']})`, test set {S['test']}, sample set {S['sample']}, fresh train
  examples for the train metric {S['train_eval']}, source split {S['split']} (none shared with examples/digits).
  `torch.set_num_threads({R['threads']})`, `torch.use_deterministic_algorithms(True)`.
- Examples generated on the fly from train sources, batch {R['batch_size']}, {R['epochs']} epochs x
  {R['steps_per_epoch']} steps = {steps} steps ({steps * R['batch_size']:,} examples, {steps * R['batch_size'] * PATCHES:,}
  labelled patches).
- Augmentation as for digits: with probability {R['shift_prob']} the source digit moves one source pixel
  left or right inside its box (the label does not change). Curriculum: fragments per image scaled by
  min(1, step / {R['curriculum_steps']}) (rounded half up). Evaluation always uses full clutter.
- AdamW (betas {list(R['betas'])}, weight decay {R['weight_decay']} on weight matrices only), peak lr {R['lr']},
  linear warmup {R['warmup_steps']} steps, cosine decay to {R['min_lr']}; cross-entropy over every patch (no
  class weights, no label smoothing); gradient clipping at norm {R['grad_clip']}.
- Wall time: training {m['train_wall_s'] / 60:.1f} min, whole script {m['total_wall_s'] / 60:.1f} min, on 2 CPU
  cores shared with other work.

| epoch | step | lr | train loss | train patch acc % (running) | test mIoU % (first {EVAL_EVERY_EPOCH}) | s |
|---|---|---|---|---|---|---|
{rows}

## Results (torch, exported weights)

| class | name | IoU | intersection | union |
|---|---|---|---|---|
{iou_rows}

- Test ({t['n']} examples, {t['patches']:,} patches): mIoU **{pct(t['miou'])}**, patch accuracy
  {pct(t['patch_accuracy'])}; sample set: mIoU {pct(m['sample']['miou'])}, {m['sample']['patch_correct']}/{m['sample']['patches']}
  patches right.
- Smallest gap between a patch's two logits: {m['min_logit_gap']['test']:.2e} (test), {m['min_logit_gap']['sample']:.3f}
  (sample); {gap_note}.

## Dataset files (`.prds`, per-patch labels)

bytes 0..7 ASCII `PRUNEDS1`; bytes 8..11 uint32 little-endian H; H bytes UTF-8 JSON header (`n`, `channels` 1,
`height` 64, `width` 64, `classes` 2, `labels` ["background", "digit"], **`targets` "patches", `patches` 64**,
`patch_grid` [8, 8], `input` "float32 pixel/255, NCHW", `seed`, `description`); **N x 64 uint8 labels** (one
class per patch, row-major over the patch grid, example after example); N x 1 x 64 x 64 uint8 pixels (NCHW).
Without `targets` (or with `targets` "examples") the label block is N bytes, one per example, as in
examples/digits. Feed the model `pixel / 255` as float32.

## How to regenerate

```
apt-get install python3-torch python3-torchvision python3-onnx python3-sklearn   # Debian 12
/usr/bin/python3 scripts/train_digit_masks.py     # trains (about {m['train_wall_s'] / 60:.0f} min here) and writes examples/digit-masks/
```

Versions used: Python {m['versions']['python']}, torch {m['versions']['torch']}, torchvision {m['versions']['torchvision']},
onnx {m['versions']['onnx']}, numpy {m['versions']['numpy']}, scikit-learn {m['versions']['sklearn']}. The datasets
are reproducible from the seeds; the trained weights are deterministic on one setup but may differ across CPUs
or library versions. Options: `--measure N` times N steps and exits; `--data-only` writes only the sample PNG
grid (scratch/, the labelled patches' top-left pixels set to 255); `--from-ckpt` re-evaluates and re-exports saved
weights (`scratch/digit-masks-ckpt.pt`) without training. Python is only needed to regenerate the model.
"""
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
