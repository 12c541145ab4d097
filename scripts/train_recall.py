#!/usr/bin/env python3
"""Train and export prunec's trained decoder with a KV cache, examples/recall/ ("multi-query associative recall").

Task: a long synthetic context (BOS, then key->value pairs `k v` scattered among filler tokens;
keys, values and fillers come from disjoint vocabularies, keys are distinct within a context), then
a query section `QUERY k` -> the model must produce the value bound to k in the context. Training
sequences carry several queries (`QUERY k v QUERY k' v' ...`, loss on every answer); the committed
evaluation sets use one query: the prompt is the context followed by `QUERY k`, the answer is the next
token (greedy). The queried pair sits anywhere in the context (uniformly), so most answers need
attention far back: evicting the wrong KV-cache entries costs accuracy.

Model: a small LLaMA-style decoder in plain torch (token embedding; pre-norm blocks of hand-written
RMSNorm -> grouped-query attention with rotary position embedding (rotate-half) -> residual add ->
RMSNorm -> SwiGLU MLP -> residual add; final RMSNorm; LM head), exported with its KV cache in the
transformers.js decoder layout: inputs input_ids, attention_mask, position_ids,
past_key_values.{i}.key/value; outputs logits, present.{i}.key/value.

Writes to examples/recall/: model.onnx, test.jsonl, sample.jsonl, metrics.json, TRAINING.md.

Needs Debian 12's python3-torch, python3-onnx, python3-numpy. Debian's torch links the reference
BLAS (libblas3), which is ~10x slower than OpenBLAS for these matrix sizes; the script re-executes
itself with OpenBLAS's libblas.so.3 first on the library path when it finds one (see find_openblas).
Run from anywhere:  nice -n 10 /usr/bin/python3 scripts/train_recall.py
    --measure N   time N training steps and exit (to size the run)
    --from-ckpt   skip training: load the saved weights, evaluate, export
"""
import argparse
import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

# ---------------------------------------------------------------------------------------------
# BLAS: before torch is imported, make sure the dynamic linker finds OpenBLAS's libblas.so.3.
# ---------------------------------------------------------------------------------------------
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
OPENBLAS_DIRS = [
    # `apt-get install libopenblas0-pthread` (the system alternative for libblas.so.3 may still be the reference one)
    "/usr/lib/x86_64-linux-gnu/openblas-pthread",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread",
    # or unpacked without installing: dpkg-deb -x libopenblas0-pthread_*.deb scratch/openblas
    os.path.join(ROOT, "scratch", "openblas", "usr", "lib", "x86_64-linux-gnu", "openblas-pthread"),
    os.path.join(ROOT, "scratch", "openblas", "usr", "lib", "aarch64-linux-gnu", "openblas-pthread"),
]


def find_openblas():
    for d in OPENBLAS_DIRS:
        if os.path.exists(os.path.join(d, "libblas.so.3")):
            return d
    return None


if os.environ.get("RECALL_BLAS_REEXEC") != "1":
    env = dict(os.environ, RECALL_BLAS_REEXEC="1", OMP_WAIT_POLICY="PASSIVE", OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    ob = find_openblas()
    if ob:
        env["LD_LIBRARY_PATH"] = ob + (":" + os.environ["LD_LIBRARY_PATH"] if os.environ.get("LD_LIBRARY_PATH") else "")
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Settings (all of them; TRAINING.md and metrics.json are generated from these)
# ---------------------------------------------------------------------------------------------
TASK = dict(
    n_keys=64,  # key vocabulary
    n_values=64,  # value vocabulary
    n_fillers=64,  # filler (distractor) vocabulary
    context_len=256,  # evaluation: tokens in the context, BOS included; the prompt adds `QUERY k` (258 tokens)
    order="kv",  # a pair is written value then key ("vk") or key then value ("kv")
    pair_every=8,  # one pair per this many context tokens: floor((context_len - 1) / pair_every) pairs (31 at 256)
    train_queries=16,  # training: queries per sequence, `QUERY k v` each, keys drawn with replacement from the context's pairs
    train_len=(32, 320),  # training: context length drawn uniformly in [min, current max] per batch
)
SPECIAL = dict(pad=0, bos=1, query=2)
KEY0 = 3
VALUE0 = KEY0 + TASK["n_keys"]
FILLER0 = VALUE0 + TASK["n_values"]
VOCAB = FILLER0 + TASK["n_fillers"]
MODEL = dict(
    vocab=VOCAB,
    hidden=64,
    layers=4,
    heads=4,
    kv_heads=2,
    head_size=16,
    intermediate=192,  # SwiGLU inner width
    max_positions=1024,  # rows of the rotary cos/sin tables
    rope_base=10000.0,
    eps=1e-6,
    init="torch",  # "torch": PyTorch's default inits; "gpt2": N(0, 0.02), residual projections / sqrt(2 layers)
)
TRAIN = dict(
    steps=4000,
    batch_tokens=4096,  # batch size = max(1, batch_tokens // sequence length): more sequences when they are short
    batch_size=16,  # --measure only
    curriculum_steps=2000,  # the context length's upper bound ramps linearly from train_len[0] to train_len[1]
    lr=3e-3,
    min_lr=3e-5,
    warmup_steps=100,
    betas=(0.9, 0.98),
    weight_decay=0.0,
    grad_clip=1.0,
    aux_weight=1.0,  # auxiliary loss: at each context value position, predict the key it follows (see TRAINING.md)
    threads=1,
    log_every=100,
)
SEEDS = dict(torch=0, train_data=1, test=2, sample=3, lengths=4)
N_TEST = 1000
N_SAMPLE = 8
SAMPLE_LEN = (192, 256)  # sample.jsonl: context lengths drawn in this range, so a left-padded batch of them has real padding
EVAL_LENGTHS = (64, 128, 192, 256, 320, 384, 512)  # informative: accuracy vs context length, 500 examples each
N_LENGTHS = 500
N_EVAL_LOG = 200  # progress log: accuracy on the first 200 test examples
OPSET = 17
FINFO_MIN = float(torch.finfo(torch.float32).min)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def n_pairs(ctx_len):
    return (ctx_len - 1) // TASK["pair_every"]


def make_context(rng, ctx_len):
    """BOS + (ctx_len - 1) tokens: n_pairs(ctx_len) pairs `k v` at random places among fillers.
    Returns tokens [ctx_len] int64, keys [P], values [P] (token ids), key positions [P]."""
    P = n_pairs(ctx_len)
    Fn = ctx_len - 1 - 2 * P
    is_pair = np.zeros(P + Fn, bool)
    is_pair[rng.choice(P + Fn, P, replace=False)] = True
    keys = KEY0 + rng.choice(TASK["n_keys"], P, replace=False)
    vals = VALUE0 + rng.integers(TASK["n_values"], size=P)
    fill = FILLER0 + rng.integers(TASK["n_fillers"], size=Fn)
    width = np.where(is_pair, 2, 1)
    start = 1 + np.concatenate([[0], np.cumsum(width)[:-1]])
    toks = np.empty(ctx_len, np.int64)
    toks[0] = SPECIAL["bos"]
    first = start[is_pair]
    kpos, vpos = (first + 1, first) if TASK["order"] == "vk" else (first, first + 1)
    toks[kpos] = keys
    toks[vpos] = vals
    toks[start[~is_pair]] = fill
    return toks, keys, vals, kpos


def train_batch(rng, bs, ctx_len):
    """Contexts of ctx_len tokens + train_queries `QUERY k v` triples. Returns tokens [bs, T] and
    the answer positions [bs, nq] (index of the query key, whose next token is the value) and answers;
    and for the auxiliary loss the context's value positions [bs, P] with the keys they follow."""
    P = n_pairs(ctx_len)
    nq = TASK["train_queries"]
    T = ctx_len + 3 * nq
    x = np.empty((bs, T), np.int64)
    pos = np.empty((bs, nq), np.int64)
    ans = np.empty((bs, nq), np.int64)
    aux_pos = np.empty((bs, P), np.int64)
    aux_key = np.empty((bs, P), np.int64)
    for b in range(bs):
        toks, keys, vals, kpos = make_context(rng, ctx_len)
        aux_pos[b] = kpos + 1 if TASK["order"] == "kv" else kpos - 1
        aux_key[b] = keys
        pick = rng.integers(P, size=nq)
        q = np.empty(3 * nq, np.int64)
        q[0::3] = SPECIAL["query"]
        q[1::3] = keys[pick]
        q[2::3] = vals[pick]
        x[b, :ctx_len] = toks
        x[b, ctx_len:] = q
        pos[b] = ctx_len + 1 + 3 * np.arange(nq)
        ans[b] = vals[pick]
    return x, pos, ans, aux_pos, aux_key


def eval_set(seed, n, ctx_len):
    """n one-query examples: prompt = context + [QUERY, k]; answer = v. The queried pair is uniform
    over the context's pairs. Also records where the pair's key sits (key_pos). ctx_len: an int, or
    an inclusive range (lo, hi) to draw each example's context length from."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        L = ctx_len if isinstance(ctx_len, int) else int(rng.integers(ctx_len[0], ctx_len[1] + 1))
        toks, keys, vals, kpos = make_context(rng, L)
        j = int(rng.integers(len(keys)))
        prompt = np.concatenate([toks, [SPECIAL["query"], keys[j]]])
        out.append(dict(prompt=prompt.tolist(), answer=int(vals[j]), context_len=L, key_pos=int(kpos[j])))
    return out


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.h, self.kvh, self.d = m["heads"], m["kv_heads"], m["head_size"]
        self.q_proj = nn.Linear(m["hidden"], self.h * self.d, bias=False)
        self.k_proj = nn.Linear(m["hidden"], self.kvh * self.d, bias=False)
        self.v_proj = nn.Linear(m["hidden"], self.kvh * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, m["hidden"], bias=False)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kvh, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kvh, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        present = (k, v)
        rep = self.h // self.kvh
        t = k.shape[2]
        kr = k[:, :, None, :, :].expand(b, self.kvh, rep, t, self.d).reshape(b, self.h, t, self.d)
        vr = v[:, :, None, :, :].expand(b, self.kvh, rep, t, self.d).reshape(b, self.h, t, self.d)
        if self.training:  # same function, one pass less over the [b, heads, s, t] scores (training speed)
            scores = torch.matmul(q * (1.0 / math.sqrt(self.d)), kr.transpose(2, 3))
        else:  # the exported form (HF LLaMA's eager attention): Q·Kᵀ, then Div by sqrt(head_size)
            scores = torch.matmul(q, kr.transpose(2, 3)) / math.sqrt(self.d)
        scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        y = torch.matmul(probs, vr).transpose(1, 2).reshape(b, s, self.h * self.d)
        return self.o_proj(y), present


class MLP(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.gate_proj = nn.Linear(m["hidden"], m["intermediate"], bias=False)
        self.up_proj = nn.Linear(m["hidden"], m["intermediate"], bias=False)
        self.down_proj = nn.Linear(m["intermediate"], m["hidden"], bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.input_layernorm = RMSNorm(m["hidden"], m["eps"])
        self.self_attn = Attention(m)
        self.post_attention_layernorm = RMSNorm(m["hidden"], m["eps"])
        self.mlp = MLP(m)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


def rotary_tables(m):
    inv = 1.0 / (m["rope_base"] ** (torch.arange(0, m["head_size"], 2, dtype=torch.float64) / m["head_size"]))
    ang = torch.arange(m["max_positions"], dtype=torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)  # HF/LLaMA: [pos, head_size], the half-table repeated
    return ang.cos().float(), ang.sin().float()


class Decoder(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.embed_tokens = nn.Embedding(m["vocab"], m["hidden"])
        self.layers = nn.ModuleList([Block(m) for _ in range(m["layers"])])
        self.norm = RMSNorm(m["hidden"], m["eps"])
        self.lm_head = nn.Linear(m["hidden"], m["vocab"], bias=False)
        cos, sin = rotary_tables(m)
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)
        if m["init"] == "gpt2":
            for mod in self.modules():
                if isinstance(mod, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(mod.weight, std=0.02)
            for blk in self.layers:  # GPT-2-style scaled init of the projections into the residual stream
                nn.init.normal_(blk.self_attn.o_proj.weight, std=0.02 / math.sqrt(2 * m["layers"]))
                nn.init.normal_(blk.mlp.down_proj.weight, std=0.02 / math.sqrt(2 * m["layers"]))
        # "torch": PyTorch's defaults (nn.Linear: kaiming-uniform, bound 1/sqrt(fan_in); nn.Embedding: N(0, 1))

    def hidden_states(self, input_ids, attention_mask, position_ids, past=None):
        """past: None or a list of (key, value) [b, kv_heads, past_len, head_size] per layer.
        Mask: query i (cache slot past_len + i) sees slot j iff j <= past_len + i and attention_mask[:, j] == 1."""
        b, s = input_ids.shape
        t = attention_mask.shape[1]
        x = self.embed_tokens(input_ids)
        cos = self.cos_cached[position_ids].unsqueeze(1)
        sin = self.sin_cached[position_ids].unsqueeze(1)
        q_slot = torch.arange(s, device=input_ids.device) + (t - s)
        k_slot = torch.arange(t, device=input_ids.device)
        causal = k_slot[None, :] <= q_slot[:, None]  # [s, t]
        allowed = causal[None, None, :, :] & (attention_mask[:, None, None, :] > 0)  # [b, 1, s, t]
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, FINFO_MIN)
        presents = []
        for i, blk in enumerate(self.layers):
            pk, pv = (past[i] if past is not None else (None, None))
            x, present = blk(x, cos, sin, mask, pk, pv)
            presents.append(present)
        return self.norm(x), presents

    def forward(self, input_ids, attention_mask, position_ids, past=None):
        h, presents = self.hidden_states(input_ids, attention_mask, position_ids, past)
        return self.lm_head(h), presents


class ExportWrapper(nn.Module):
    """Flat signature for torch.onnx.export: (input_ids, attention_mask, position_ids, k0, v0, k1, v1, ...)
    -> (logits, present k0, v0, k1, v1, ...)."""

    def __init__(self, dec):
        super().__init__()
        self.model = dec  # node names then read /model/layers.N/..., as in HF exports

    def forward(self, input_ids, attention_mask, position_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, presents = self.model(input_ids, attention_mask, position_ids, past)
        out = [logits]
        for k, v in presents:
            out += [k, v]
        return tuple(out)


def full_positions(b, s):
    return torch.arange(s, dtype=torch.long)[None, :].expand(b, s)


@torch.no_grad()
def prompt_logits(dec, prompts, bs=100):
    """Next-token logits after each prompt (all prompts the same length; no padding)."""
    out = []
    for i in range(0, len(prompts), bs):
        x = torch.tensor([p for p in prompts[i:i + bs]], dtype=torch.long)
        b, s = x.shape
        h, _ = dec.hidden_states(x, torch.ones(b, s, dtype=torch.long), full_positions(b, s))
        out.append(dec.lm_head(h[:, -1]))
    return torch.cat(out)


def lr_at(step, total):
    if step < TRAIN["warmup_steps"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup_steps"]
    t = (step - TRAIN["warmup_steps"]) / max(1, total - TRAIN["warmup_steps"])
    return TRAIN["min_lr"] + 0.5 * (TRAIN["lr"] - TRAIN["min_lr"]) * (1 + math.cos(math.pi * t))


def batch_for(ctx_len):
    T = ctx_len + 3 * TASK["train_queries"]
    return max(1, TRAIN["batch_tokens"] // T)


def ctx_len_at(rng, step):
    lo, hi = TASK["train_len"]
    cur = lo + (hi - lo) * min(1.0, step / max(1, TRAIN["curriculum_steps"]))
    return int(rng.integers(lo, int(cur) + 1))


# ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "examples", "recall"))
    ap.add_argument("--measure", type=int, default=0, help="time N training steps and exit")
    ap.add_argument("--measure-len", type=int, default=TASK["train_len"][1], help="context length for --measure")
    ap.add_argument("--steps", type=int, default=TRAIN["steps"])
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "scratch", "recall-ckpt.pt"),
                    help="where to save the trained weights and the training log")
    ap.add_argument("--from-ckpt", action="store_true", help="skip training: load --ckpt, evaluate, export")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                    help="override a setting for an experiment, e.g. --set train.lr=3e-3 (the committed files use none)")
    args = ap.parse_args()
    TRAIN["steps"] = args.steps
    for o in args.set:
        k, v = o.split("=", 1)
        sec, key = k.split(".")
        d = {"task": TASK, "model": MODEL, "train": TRAIN}[sec]
        assert key in d, k
        d[key] = json.loads(v)
        print(f"override {sec}.{key} = {d[key]}", flush=True)
    out = os.path.abspath(args.out)
    t_start = time.time()

    torch.set_num_threads(TRAIN["threads"])
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEEDS["torch"])
    np.random.seed(SEEDS["torch"])
    blas = find_openblas() if os.environ.get("LD_LIBRARY_PATH", "").split(":")[0] == find_openblas() else None
    print(f"vocab {VOCAB}; BLAS: {'OpenBLAS from ' + blas if blas else 'the system libblas.so.3 (no OpenBLAS found)'}", flush=True)

    dec = Decoder(MODEL)
    nparams = sum(p.numel() for p in dec.parameters())
    print(f"model: {MODEL}, {nparams} parameters", flush=True)
    opt = torch.optim.Adam(dec.parameters(), lr=TRAIN["lr"], betas=TRAIN["betas"], weight_decay=TRAIN["weight_decay"])
    gen = np.random.default_rng(SEEDS["train_data"])
    total = TRAIN["steps"]

    if args.measure:
        dec.train()
        t0 = time.time()
        tdata = 0.0
        for step in range(args.measure):
            td = time.time()
            x, pos, ans, aux_pos, aux_key = train_batch(gen, TRAIN["batch_size"], args.measure_len)
            tdata += time.time() - td
            loss, _ = train_step(dec, opt, x, pos, ans, lr_at(step, total), (aux_pos, aux_key), TRAIN["aux_weight"])
        dt = time.time() - t0
        T = x.shape[1]
        print(f"measure: {args.measure} steps of {TRAIN['batch_size']} x {T} tokens in {dt:.1f}s = "
              f"{dt / args.measure:.3f}s/step (data {tdata / args.measure:.3f}s/step); loss {loss:.3f}", flush=True)
        return 0

    os.makedirs(out, exist_ok=True)
    test = eval_set(SEEDS["test"], N_TEST, TASK["context_len"])
    test_prompts = [e["prompt"] for e in test]
    test_y = np.array([e["answer"] for e in test])

    log = []
    t_train = time.time()
    if not args.from_ckpt:
        run_l, run_c, run_n = 0.0, 0, 0
        t_last = time.time()
        for step in range(total):
            L = ctx_len_at(gen, step)
            x, pos, ans, aux_pos, aux_key = train_batch(gen, batch_for(L), L)
            loss, correct = train_step(dec, opt, x, pos, ans, lr_at(step, total), (aux_pos, aux_key), TRAIN["aux_weight"])
            run_l += loss * ans.size
            run_c += correct
            run_n += ans.size
            if (step + 1) % TRAIN["log_every"] == 0 or step + 1 == total:
                dec.eval()
                pred = prompt_logits(dec, test_prompts[:N_EVAL_LOG]).argmax(1).numpy()
                dec.train()
                acc = float((pred == test_y[:N_EVAL_LOG]).mean())
                rec = dict(step=step + 1, lr=lr_at(step, total), max_context=TASK["train_len"][0] + int(
                    (TASK["train_len"][1] - TASK["train_len"][0]) * min(1.0, step / max(1, TRAIN["curriculum_steps"]))),
                    train_loss=run_l / run_n, train_acc=run_c / run_n, test200_acc=acc,
                    seconds=time.time() - t_last)
                log.append(rec)
                print(f"step {step + 1:5d}/{total} lr {rec['lr']:.2e} ctx<={rec['max_context']} loss {rec['train_loss']:.4f} "
                      f"train_acc {rec['train_acc']:.4f} test200_acc {acc:.4f} ({rec['seconds']:.0f}s, "
                      f"total {time.time() - t_start:.0f}s)", flush=True)
                run_l, run_c, run_n = 0.0, 0, 0
                t_last = time.time()
        train_wall = time.time() - t_train
        if args.ckpt:
            os.makedirs(os.path.dirname(os.path.abspath(args.ckpt)), exist_ok=True)
            torch.save({"state": dec.state_dict(), "log": log, "train_wall": train_wall}, args.ckpt)
    else:
        ck = torch.load(args.ckpt)
        dec.load_state_dict(ck["state"])
        log, train_wall = ck["log"], ck["train_wall"]
        t_start -= train_wall  # total_wall_s then reads as for a run that trained
        print(f"loaded {args.ckpt} (trained in {train_wall:.0f}s)", flush=True)
    dec.eval()
    return finish(args, dec, out, test, nparams, log, train_wall, t_start)


def train_step(dec, opt, x, pos, ans, lr, aux=None, aux_weight=0.0):
    x = torch.from_numpy(x)
    b, T = x.shape
    for g in opt.param_groups:
        g["lr"] = lr
    h, _ = dec.hidden_states(x, torch.ones(b, T, dtype=torch.long), full_positions(b, T))
    hq = h[torch.arange(b)[:, None], torch.from_numpy(pos)]
    logits = dec.lm_head(hq).reshape(-1, MODEL["vocab"])
    y = torch.from_numpy(ans).reshape(-1)
    loss = F.cross_entropy(logits, y)
    total = loss
    if aux is not None and aux_weight > 0:
        ha = h[torch.arange(b)[:, None], torch.from_numpy(aux[0])]
        total = loss + aux_weight * F.cross_entropy(dec.lm_head(ha).reshape(-1, MODEL["vocab"]),
                                                    torch.from_numpy(aux[1]).reshape(-1))
    opt.zero_grad(set_to_none=True)
    total.backward()
    nn.utils.clip_grad_norm_(dec.parameters(), TRAIN["grad_clip"])
    opt.step()
    return float(loss), int((logits.argmax(1) == y).sum())


def empty_past(b):
    z = torch.zeros(b, MODEL["kv_heads"], 0, MODEL["head_size"])
    return [(z, z) for _ in range(MODEL["layers"])]


@torch.no_grad()
def run_dec(dec, ids, mask, pos, past):
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
    return dec(t(ids), t(mask), t(pos), past)


def left_pad(prompts):
    """Left-padded batch: ids (PAD before each prompt), attention_mask, position_ids (0 on the pads,
    0..n-1 on each prompt's tokens, as transformers.js computes them: cumsum(mask) - 1, pads clipped to 0)."""
    N = max(len(p) for p in prompts)
    ids = np.full((len(prompts), N), SPECIAL["pad"], np.int64)
    mask = np.zeros((len(prompts), N), np.int64)
    for i, p in enumerate(prompts):
        ids[i, N - len(p):] = p
        mask[i, N - len(p):] = 1
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, pos


@torch.no_grad()
def torch_cache_checks(dec, samples):
    """The KV cache in torch: (1) per sample, prefill the context, decode QUERY alone, then `k answer` as a
    2-token chunk, compare every logit and the final present with one full forward of prompt + answer;
    (2) the left-padded batch of all samples vs each alone, at prefill and at one decode step."""
    worst_logit, worst_present = 0.0, 0.0
    for e in samples:
        seq = e["prompt"] + [e["answer"]]
        n, c = len(seq), e["context_len"]
        full, full_pres = run_dec(dec, [seq], [[1] * n], [list(range(n))], empty_past(1))
        parts = [(0, c), (c, c + 1), (c + 1, n)]
        past, got = empty_past(1), []
        for a, b in parts:
            lg, past = run_dec(dec, [seq[a:b]], [[1] * b], [list(range(a, b))], past)
            got.append(lg)
        worst_logit = max(worst_logit, float((torch.cat(got, 1) - full).abs().max()))
        for (k1, v1), (k2, v2) in zip(past, full_pres):
            worst_present = max(worst_present, float((k1 - k2).abs().max()), float((v1 - v2).abs().max()))
    prompts = [e["prompt"] for e in samples]
    ids, mask, pos = left_pad(prompts)
    lg, pres = run_dec(dec, ids, mask, pos, empty_past(len(prompts)))
    pad_prefill = 0.0
    pad_decode = 0.0
    ans = [[e["answer"]] for e in samples]
    lg2, _ = run_dec(dec, ans, np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], 1),
                     [[len(p)] for p in prompts], pres)
    for i, e in enumerate(samples):
        p = e["prompt"]
        one, _ = run_dec(dec, [p + [e["answer"]]], [[1] * (len(p) + 1)], [list(range(len(p) + 1))], empty_past(1))
        pad_prefill = max(pad_prefill, float((lg[i, -1] - one[0, -2]).abs().max()))
        pad_decode = max(pad_decode, float((lg2[i, -1] - one[0, -1]).abs().max()))
    return dict(cache_vs_full_max_abs_logit=worst_logit, cache_vs_full_max_abs_present=worst_present,
                left_padded_vs_alone_prefill_max_abs_logit=pad_prefill,
                left_padded_vs_alone_decode_max_abs_logit=pad_decode)


ORT_JS = r"""
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
const [root, model, feedsPath, outPath] = process.argv.slice(2);
const ort = createRequire(root + "/package.json")("onnxruntime-node");
const cases = JSON.parse(readFileSync(feedsPath, "utf8"));
const session = await ort.InferenceSession.create(model, { executionProviders: ["cpu"] });
const out = [];
for (const c of cases) {
  const feeds = {};
  for (const [name, f] of Object.entries(c)) {
    const data = f.type === "int64" ? BigInt64Array.from(f.data.map((v) => BigInt(v))) : Float32Array.from(f.data);
    feeds[name] = new ort.Tensor(f.type, data, f.dims);
  }
  const res = await session.run(feeds);
  const o = {};
  for (const name of session.outputNames) o[name] = { dims: res[name].dims, data: Array.from(res[name].data) };
  out.push(o);
}
writeFileSync(outPath, JSON.stringify({ version: ort.env.versions?.node ?? ort.env.versions?.common ?? "?", out }));
"""


def ort_feeds(ids, mask, pos, past):
    f = {"input_ids": dict(type="int64", dims=list(np.shape(ids)), data=np.asarray(ids).ravel().tolist()),
         "attention_mask": dict(type="int64", dims=list(np.shape(mask)), data=np.asarray(mask).ravel().tolist()),
         "position_ids": dict(type="int64", dims=list(np.shape(pos)), data=np.asarray(pos).ravel().tolist())}
    for i, (k, v) in enumerate(past):
        for name, t in (("key", k), ("value", v)):
            f[f"past_key_values.{i}.{name}"] = dict(type="float32", dims=list(t.shape), data=t.numpy().ravel().tolist())
    return f


@torch.no_grad()
def onnx_checks(dec, path, samples):
    """Run model.onnx on onnxruntime (Python if importable, else the repo's onnxruntime-node through
    `node`) and compare with torch: each sample's prefill (batch 1, empty past: logits everywhere and
    every present), the left-padded batch (last-position logits), and one decode step fed torch's
    cache (batch 1 and left-padded). Returns a dict (with `skipped` and why when neither runtime is there)."""
    cases, expect = [], []
    for e in samples:
        p = e["prompt"]
        n = len(p)
        args = ([p], [[1] * n], [list(range(n))], empty_past(1))
        lg, pres = run_dec(dec, *args)
        cases.append(ort_feeds(*args))
        expect.append(("prefill", lg, pres, None))
    prompts = [e["prompt"] for e in samples]
    ids, mask, pos = left_pad(prompts)
    lg, pres = run_dec(dec, ids, mask, pos, empty_past(len(prompts)))
    cases.append(ort_feeds(ids, mask, pos, empty_past(len(prompts))))
    expect.append(("padded", lg, pres, mask))
    ans = [[e["answer"]] for e in samples]
    mask2 = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], 1)
    pos2 = [[len(p)] for p in prompts]
    lg2, pres2 = run_dec(dec, ans, mask2, pos2, pres)
    cases.append(ort_feeds(ans, mask2, pos2, pres))
    expect.append(("decode-padded", lg2, pres2, None))
    p0 = samples[0]["prompt"]
    _, pres0 = run_dec(dec, [p0], [[1] * len(p0)], [list(range(len(p0)))], empty_past(1))
    args = (ans[:1], [[1] * (len(p0) + 1)], [[len(p0)]], pres0)
    lg3, pres3 = run_dec(dec, *args)
    cases.append(ort_feeds(*args))
    expect.append(("decode", lg3, pres3, None))

    outs, runtime = None, None
    try:
        import onnxruntime as ort_py  # noqa: F401  (not in Debian 12)
        sess = ort_py.InferenceSession(path, providers=["CPUExecutionProvider"])
        outs = []
        for c in cases:
            feeds = {k: np.asarray(v["data"], dtype=np.int64 if v["type"] == "int64" else np.float32).reshape(v["dims"])
                     for k, v in c.items()}
            res = sess.run(None, feeds)
            outs.append({o.name: {"dims": list(r.shape), "data": r.ravel().tolist()} for o, r in zip(sess.get_outputs(), res)})
        runtime = f"onnxruntime (Python) {ort_py.__version__}"
    except ImportError:
        node = shutil.which("node")
        if node is None or not os.path.isdir(os.path.join(ROOT, "node_modules", "onnxruntime-node")):
            return {"skipped": True, "why": "neither Python onnxruntime nor node with the repo's onnxruntime-node is available"}
        tmp = os.path.join(ROOT, "scratch", "recall-ort-check")
        os.makedirs(tmp, exist_ok=True)
        with open(os.path.join(tmp, "check.mjs"), "w") as f:
            f.write(ORT_JS)
        with open(os.path.join(tmp, "feeds.json"), "w") as f:
            json.dump(cases, f)
        subprocess.run([node, os.path.join(tmp, "check.mjs"), ROOT, path, os.path.join(tmp, "feeds.json"),
                        os.path.join(tmp, "out.json")], check=True, env=dict(os.environ, LD_LIBRARY_PATH=""))
        with open(os.path.join(tmp, "out.json")) as f:
            got = json.load(f)
        outs = got["out"]
        with open(os.path.join(ROOT, "node_modules", "onnxruntime-node", "package.json")) as f:
            runtime = f"onnxruntime-node {json.load(f)['version']} (through node {subprocess.run([node, '--version'], capture_output=True, text=True).stdout.strip()})"
    res = dict(runtime=runtime, prefill_max_abs_logit=0.0, prefill_max_abs_present=0.0,
               padded_prefill_max_abs_last_logit=0.0, decode_max_abs_logit=0.0, decode_max_abs_present=0.0,
               argmax_agree=True)
    for (kind, lg, pres, mask), o in zip(expect, outs):
        got_lg = torch.tensor(o["logits"]["data"], dtype=torch.float32).reshape(o["logits"]["dims"])
        if kind == "padded":  # the pad rows' logits are meaningless: compare each example's last position
            d = float((got_lg[:, -1] - lg[:, -1]).abs().max())
            res["padded_prefill_max_abs_last_logit"] = max(res["padded_prefill_max_abs_last_logit"], d)
        else:
            d = float((got_lg - lg).abs().max())
            key = "prefill" if kind == "prefill" else "decode"
            res[f"{key}_max_abs_logit"] = max(res[f"{key}_max_abs_logit"], d)
            for i, (k, v) in enumerate(pres):
                for name, t in (("key", k), ("value", v)):
                    g = o[f"present.{i}.{name}"]
                    assert list(g["dims"]) == list(t.shape), (kind, name, g["dims"], t.shape)
                    dd = float((torch.tensor(g["data"]).reshape(g["dims"]) - t).abs().max())
                    res[f"{key}_max_abs_present"] = max(res[f"{key}_max_abs_present"], dd)
        res["argmax_agree"] = res["argmax_agree"] and bool((got_lg[:, -1].argmax(-1) == lg[:, -1].argmax(-1)).all())
    return res


def export_onnx(dec, path):
    m = MODEL
    wrapper = ExportWrapper(dec).eval()
    b, s, past_len = 2, 3, 4
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, m["vocab"], (b, s), generator=g)
    mask = torch.ones(b, past_len + s, dtype=torch.long)
    pos = torch.arange(past_len, past_len + s)[None, :].expand(b, s).contiguous()
    past = []
    in_names = ["input_ids", "attention_mask", "position_ids"]
    out_names = ["logits"]
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    for i in range(m["layers"]):
        for kv in ("key", "value"):
            past.append(torch.randn(b, m["kv_heads"], past_len, m["head_size"], generator=g))
            in_names.append(f"past_key_values.{i}.{kv}")
            out_names.append(f"present.{i}.{kv}")
            axes[in_names[-1]] = {0: "batch_size", 2: "past_sequence_length"}
            axes[out_names[-1]] = {0: "batch_size", 2: "total_sequence_length"}
    torch.onnx.export(wrapper, (ids, mask, pos, *past), path, opset_version=OPSET, input_names=in_names,
                      output_names=out_names, dynamic_axes=axes, do_constant_folding=True)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items()))


def accuracy_by(pred_ok, keys, edges):
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (keys >= lo) & (keys < hi)
        out.append(dict(lo=int(lo), hi=int(hi), n=int(sel.sum()), accuracy=float(pred_ok[sel].mean()) if sel.any() else None))
    return out


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


def finish(args, dec, out, test, nparams, log, train_wall, t_start):
    test_prompts = [e["prompt"] for e in test]
    test_y = np.array([e["answer"] for e in test])
    logits = prompt_logits(dec, test_prompts)
    pred = logits.argmax(1).numpy()
    correct = pred == test_y
    acc = float(correct.mean())
    print(f"dense test accuracy {acc:.4f} ({int(correct.sum())}/{len(test)})", flush=True)
    key_pos = np.array([e["key_pos"] for e in test])
    C = TASK["context_len"]
    by_depth = accuracy_by(correct, key_pos, [1, C // 4, C // 2, 3 * C // 4, C])
    top2 = torch.topk(logits, 2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    value_rank_ok = float(((pred >= VALUE0) & (pred < FILLER0)).mean())

    lengths = []
    for L in EVAL_LENGTHS:
        es = eval_set(SEEDS["lengths"] * 1000 + L, N_LENGTHS, L)
        pl = prompt_logits(dec, [e["prompt"] for e in es], bs=50).argmax(1).numpy()
        a = float((pl == np.array([e["answer"] for e in es])).mean())
        lengths.append(dict(context_len=L, pairs=n_pairs(L), n=N_LENGTHS, accuracy=a))
        print(f"context {L}: accuracy {a:.4f}", flush=True)

    samples = eval_set(SEEDS["sample"], N_SAMPLE, SAMPLE_LEN)
    sample_logits = torch.cat([prompt_logits(dec, [e["prompt"]]) for e in samples])
    sample_pred = sample_logits.argmax(1).numpy()
    st2 = torch.topk(sample_logits, 2, dim=1).values
    sample_margin = (st2[:, 0] - st2[:, 1]).numpy()
    for e, p, lg in zip(samples, sample_pred, sample_logits):
        e["prediction"] = int(p)
        e["logits"] = [round(float(v), 5) for v in lg]

    cache = torch_cache_checks(dec, samples)
    print(f"torch cache checks: {cache}", flush=True)

    path = os.path.join(out, "model.onnx")
    ops = export_onnx(dec, path)
    size = os.path.getsize(path)
    print(f"wrote {path} ({size} bytes); ops {ops}", flush=True)
    ort_check = onnx_checks(dec, path, samples)
    print(f"onnxruntime checks: {ort_check}", flush=True)

    for e in test:
        e.pop("prediction", None)
    write_jsonl(os.path.join(out, "test.jsonl"), test)
    write_jsonl(os.path.join(out, "sample.jsonl"), samples)
    n200 = N_EVAL_LOG
    metrics = {
        "task": "multi-query associative recall",
        "vocab": dict(size=VOCAB, pad=SPECIAL["pad"], bos=SPECIAL["bos"], query=SPECIAL["query"],
                      keys=[KEY0, VALUE0 - 1], values=[VALUE0, FILLER0 - 1], fillers=[FILLER0, VOCAB - 1]),
        "test": {"n": len(test), "context_len": C, "prompt_len": C + 2, "pairs": n_pairs(C), "correct": int(correct.sum()),
                 "accuracy": acc, "accuracy_by_key_position": by_depth,
                 "predicted_a_value_token": value_rank_ok, "chance": 1.0 / TASK["n_values"]},
        "first200_correct": int(correct[:n200].sum()),
        "first200_n": n200,
        "first200_accuracy": float(correct[:n200].mean()),
        "first200_predictions": pred[:n200].tolist(),
        "sample_correct": int((sample_pred == np.array([e["answer"] for e in samples])).sum()),
        "sample_n": N_SAMPLE,
        "sample_predictions": sample_pred.tolist(),
        "min_top2_logit_gap": {"sample": float(sample_margin.min()), "first200": float(margin[:n200].min()),
                               "test": float(margin.min())},
        "accuracy_by_context_len": lengths,
        "torch_cache_checks": cache,
        "onnxruntime_checks": ort_check,
        "onnx_ops": ops,
        "parameters": nparams,
        "model_bytes": size,
        "settings": {"task": TASK, "special": SPECIAL, "model": MODEL, "train": TRAIN, "seeds": SEEDS,
                     "n_test": N_TEST, "n_sample": N_SAMPLE, "sample_len": SAMPLE_LEN, "eval_lengths": EVAL_LENGTHS,
                     "n_lengths": N_LENGTHS, "opset": OPSET},
        "train_wall_s": round(train_wall, 1),
        "total_wall_s": round(time.time() - t_start, 1),
        "blas": "OpenBLAS" if os.environ.get("LD_LIBRARY_PATH", "").split(":")[0] == find_openblas() else "system libblas.so.3",
        "log": log,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                     "numpy": np.__version__},
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    write_training_md(os.path.join(out, "TRAINING.md"), metrics, out, samples)
    short = {k: metrics[k] for k in ("first200_accuracy", "sample_correct", "min_top2_logit_gap", "accuracy_by_context_len",
                                     "train_wall_s", "total_wall_s")}
    short["test"] = {k: metrics["test"][k] for k in ("n", "correct", "accuracy", "accuracy_by_key_position")}
    print(json.dumps(short, indent=1), flush=True)
    return 0


def write_training_md(path, m, out, samples):
    T, M, R, S = TASK, MODEL, TRAIN, SEEDS
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in ("model.onnx", "test.jsonl", "sample.jsonl")}
    t = m["test"]
    C = T["context_len"]
    rows = "\n".join(f"| {r['step']} | {r['max_context']} | {r['lr']:.2e} | {r['train_loss']:.4f} | {r['train_acc'] * 100:.1f} | "
                     f"{r['test200_acc'] * 100:.1f} | {r['seconds']:.0f} |" for r in m["log"])
    # a key sits at 1..C-2 (its value follows it inside the context); the query's key token is at C+1
    depth = "\n".join(f"| {d['lo']}..{min(d['hi'] - 1, C - 2)} | {C + 1 - min(d['hi'] - 1, C - 2)}..{C + 1 - d['lo']} | {d['n']} | "
                      f"{d['accuracy'] * 100:.1f} |" for d in t["accuracy_by_key_position"])
    lens = "\n".join(f"| {x['context_len']}{' (beyond training)' if x['context_len'] > T['train_len'][1] else ''} | {x['pairs']} | "
                     f"{x['accuracy'] * 100:.1f} |" for x in m["accuracy_by_context_len"])
    ck, oc = m["torch_cache_checks"], m["onnxruntime_checks"]
    if oc.get("skipped"):
        ort_text = f"Skipped: {oc['why']}."
    else:
        ort_text = (f"On {oc['runtime']}: prefill of the 8 sample prompts alone (empty past), every logit within "
                    f"{oc['prefill_max_abs_logit']:.1e} and every present within {oc['prefill_max_abs_present']:.1e} of torch; "
                    f"their left-padded batch, last-position logits within {oc['padded_prefill_max_abs_last_logit']:.1e}; one decode "
                    f"step fed torch's cache (batch 1 and the padded batch), logits within {oc['decode_max_abs_logit']:.1e}, presents "
                    f"within {oc['decode_max_abs_present']:.1e}; greedy answers agree: {oc['argmax_agree']}. (`onnx.reference` "
                    f"needs onnx >= 1.13; Debian 12 has {m['versions']['onnx']}, and no Python onnxruntime, so the script runs the "
                    "repo's onnxruntime-node through `node`.)")
    gap = min(m["min_top2_logit_gap"]["sample"], m["min_top2_logit_gap"]["first200"])
    rt = "" if oc.get("skipped") else f" (at most {max(oc['prefill_max_abs_logit'], oc['decode_max_abs_logit']):.1e} here)"
    gap_note = (f", far above the logit differences between torch and onnxruntime{rt}, so none of these argmaxes can flip."
                if gap > 1e-2 else "; that is small enough that a runtime's rounding could flip one of these argmaxes.")
    total_steps = R["steps"]
    text = f"""# recall: prunec's trained decoder with a KV cache ("multi-query associative recall")

A small LLaMA-style decoder, really trained, on a task where the answer sits in one pair far back in a long
context: a context of key->value pairs scattered among filler tokens, then `QUERY k`; the model must produce
the value bound to k. It is the KV-cache yardstick: evicting the cache entries of the queried pair costs the
answer. Written by `scripts/train_recall.py`; everything below (numbers included) is generated by that script.

**Dense test accuracy: {t['accuracy'] * 100:.2f}% ({t['correct']}/{t['n']})**, greedy next token after a {C + 2}-token
prompt ({t['pairs']} pairs in a {C}-token context; chance {t['chance'] * 100:.1f}%).

| file | what |
|---|---|
| `model.onnx` | the model, {sizes['model.onnx']:,} bytes, opset {OPSET}, with a KV cache in the transformers.js decoder layout (below) |
| `test.jsonl` | the test set: {t['n']} prompts of {C + 2} tokens (seed {S['test']}), {sizes['test.jsonl']:,} bytes |
| `sample.jsonl` | {m['sample_n']} prompts with contexts of {SAMPLE_LEN[0]}..{SAMPLE_LEN[1]} tokens (seed {S['sample']}), with torch's prediction and logits, {sizes['sample.jsonl']:,} bytes |
| `metrics.json` | accuracies (overall, by the queried pair's position, by context length), predictions the tests compare against, the cache and runtime checks, every setting, the training log |

## Task

- Vocabulary, {VOCAB} ids: {SPECIAL['pad']} PAD, {SPECIAL['bos']} BOS, {SPECIAL['query']} QUERY; keys {KEY0}..{VALUE0 - 1}
  ({T['n_keys']}), values {VALUE0}..{FILLER0 - 1} ({T['n_values']}), fillers {FILLER0}..{VOCAB - 1} ({T['n_fillers']}): disjoint.
- A context of L tokens: BOS, then P = floor((L - 1) / {T['pair_every']}) pairs `k v` (key first, value right after it) and
  L - 1 - 2P fillers. The P keys are distinct (drawn without replacement), each value is uniform over the {T['n_values']}
  values (values may repeat), each filler uniform over the {T['n_fillers']} fillers; which of the P + (L - 1 - 2P) items
  are pairs is a uniformly random choice, so pairs sit anywhere, never overlapping.
- An evaluation prompt: a context of {C} tokens ({t['pairs']} pairs), then `QUERY k` for the key of one pair chosen
  uniformly; the answer is that pair's value, and accuracy is whether the argmax of the logits at the prompt's last
  position (over the whole vocabulary) is the answer. The queried key sits anywhere in the context, 3 to {C} tokens
  before the query's key token, so most answers need attention far back: a cache that dropped that pair's entries
  cannot answer, and guessing among the {T['n_values']} values is right {t['chance'] * 100:.1f}% of the time.
- For cache eviction each example records `context_len`: prefill `prompt[:context_len]`, compress the cache, then
  decode `QUERY` and `k` (question-agnostic), or prefill the whole prompt (the query is then in the last two tokens, e.g.
  in SnapKV's observation window).
- Training sequences: a context of L tokens, then {T['train_queries']} triples `QUERY k v` whose keys are drawn with
  replacement from the context's pairs; the loss is cross-entropy at each query key (target: its value). A key asked
  twice can also be answered from the earlier triple (the same copy-what-followed mechanism).
- Held out: the test and sample sets come from their own seeds. Train and test are the same distribution; with
  {T['n_keys']}-choose-{t['pairs']} key sets, {T['n_values']}^{t['pairs']} value assignments and the filler arrangement, no test context can have been
  seen in training.

## Model

A LLaMA-style decoder in plain torch (`Decoder` in the script), {m['parameters']:,} parameters:
token embedding [{VOCAB}, {M['hidden']}]; {M['layers']} pre-norm blocks, each RMSNorm -> attention -> residual add -> RMSNorm ->
SwiGLU MLP (`down(silu(gate(x)) * up(x))`, inner width {M['intermediate']}) -> residual add; a final RMSNorm; an untied LM head
[{M['hidden']}, {VOCAB}]. No biases, no dropout.
- RMSNorm written by hand: `x * rsqrt(mean(x^2, -1) + {M['eps']}) * weight`.
- Grouped-query attention: {M['heads']} query heads, {M['kv_heads']} key/value heads, head size {M['head_size']} (each key/value head
  serves {M['heads'] // M['kv_heads']} query heads, repeated HF-style: Unsqueeze, Expand, Reshape).
- Rotary position embedding, rotate-half (HF/LLaMA): `q * cos + rotate_half(q) * sin`, with cos/sin gathered by
  `position_ids` from [{M['max_positions']}, {M['head_size']}] tables (base {M['rope_base']:g}; the half-table repeated), on q and k.
- Scores `Q.K^T / sqrt({M['head_size']})` + an additive mask, softmax, times V. The mask lets query i (cache slot
  past_len + i, past_len = total - seq) see slot j iff j <= past_len + i and attention_mask[b, j] = 1; elsewhere it is
  float32's lowest value ({FINFO_MIN:.7g}), so a padded batch gives every example its own logits.
- Init: {'PyTorch defaults (nn.Linear kaiming-uniform, nn.Embedding N(0, 1))' if M['init'] == 'torch' else 'N(0, 0.02), GPT-2 style'}.

Export: `torch.onnx.export` (TorchScript exporter) of the decoder with its cache, opset {OPSET}, `do_constant_folding=True`,
checked with `onnx.checker`; traced with batch 2, 3 new tokens and a past of 4 so no length is baked in.

| | name | type and shape |
|---|---|---|
| in | `input_ids` | int64 [batch_size, sequence_length] |
| in | `attention_mask` | int64 [batch_size, total_sequence_length] (1 real, 0 padding; covers past + new tokens) |
| in | `position_ids` | int64 [batch_size, sequence_length] |
| in | `past_key_values.{{i}}.key` / `.value`, i = 0..{M['layers'] - 1} | float32 [batch_size, {M['kv_heads']}, past_sequence_length, {M['head_size']}] |
| out | `logits` | float32 [batch_size, sequence_length, {VOCAB}] |
| out | `present.{{i}}.key` / `.value` | float32 [batch_size, {M['kv_heads']}, total_sequence_length, {M['head_size']}] = concat(past, new) on axis 2 |

Keys are cached after rotary. Prefill feeds a past of length 0 ([batch, {M['kv_heads']}, 0, {M['head_size']}]); left padding takes
`position_ids = max(cumsum(attention_mask) - 1, 0)`; each decode step appends a 1 to `attention_mask` and feeds the
returned presents. Graph ops: {', '.join(f'{k} {v}' for k, v in m['onnx_ops'].items())}.

## Checks (run by the script)

- Torch, with the cache: each sample's prompt + answer in three pieces (prefill the context with an empty past, decode
  `QUERY`, then `k answer` as one 2-token step) equals one forward without a cache: logits within {ck['cache_vs_full_max_abs_logit']:.1e}, final
  presents within {ck['cache_vs_full_max_abs_present']:.1e}. The left-padded batch of the 8 samples equals each alone: last-position logits within
  {ck['left_padded_vs_alone_prefill_max_abs_logit']:.1e} at prefill and {ck['left_padded_vs_alone_decode_max_abs_logit']:.1e} after one decode step.
- ONNX: {ort_text}

## Training

- Seeds: `torch.manual_seed({S['torch']})` (init), training data `np.random.default_rng({S['train_data']})`, test set {S['test']},
  sample set {S['sample']}, context-length sets {S['lengths']} x 1000 + L. `torch.set_num_threads({R['threads']})`,
  `torch.use_deterministic_algorithms(True)`, under `nice -n 10`; BLAS: {m['blas']} (Debian's torch links the reference
  libblas3, about 10x slower here; the script puts OpenBLAS's libblas.so.3 first on the library path when it finds one).
- {total_steps} steps; every batch holds floor({R['batch_tokens']} / sequence length) sequences of one length (context + {3 * T['train_queries']}
  query tokens; more sequences when short).
  Curriculum: each batch's context length is uniform in [{T['train_len'][0]}, m], where m grows linearly from {T['train_len'][0]} to
  {T['train_len'][1]} over the first {R['curriculum_steps']} steps; evaluation uses {C} (and, informatively, other lengths below).
- Adam (betas {list(R['betas'])}, weight decay {R['weight_decay']}), peak lr {R['lr']}, linear warmup {R['warmup_steps']} steps, cosine decay
  to {R['min_lr']}; gradient clipping at norm {R['grad_clip']}.
- Auxiliary loss (weight {R['aux_weight']}): at every value position of the context the model is also trained to output the key
  that value follows (cross-entropy through the same LM head), i.e. to know at a value "which key am I bound to".
  Measured while designing, without it the model sat on the plateau of "answer some value of the context": 1000
  steps of 32 sequences with 32-token contexts (3 pairs) ended at 34% train accuracy (1 in 3) for every variant
  tried: 4 layers with lr 3e-3 or 1e-2, 2 layers, N(0, 0.02) or PyTorch's init, value-before-key pairs; longer runs
  on 32..64-token contexts (1500 to 2300 steps, other batch sizes, queries without replacement) ended at 15 to 40%.
  With it, the same 1000-step runs (4 layers, lr 3e-3, PyTorch's init) reached 99% by step 400, at 32 and at 64
  tokens. The recall is still the query's to do: the auxiliary target is never an answer, and the value positions it
  trains are never evaluated.
- Wall time: training {m['train_wall_s'] / 60:.1f} min, whole script (data, training, evaluation, export, checks)
  {m['total_wall_s'] / 60:.1f} min, on 1 thread of 2 CPU cores shared with other work (per-interval times below vary
  with that load).

| step | max context | lr | train loss | train acc % (running) | test acc % (first 200) | s |
|---|---|---|---|---|---|---|
{rows}

## Results (torch, the exported form)

- Test ({t['n']} prompts of {C + 2} tokens): **{t['accuracy'] * 100:.2f}%**; the prediction is a value token in
  {t['predicted_a_value_token'] * 100:.1f}% of them. First 200: {m['first200_correct']}/{m['first200_n']}.
- By where the queried pair sits (key position in the context; distance = tokens from that key to the query's key):

| key position | distance | n | accuracy % |
|---|---|---|---|
{depth}

- By context length ({N_LENGTHS} prompts each; training saw {T['train_len'][0]}..{T['train_len'][1]}):

| context | pairs | accuracy % |
|---|---|---|
{lens}

- Sample set: {m['sample_correct']}/{m['sample_n']} correct. `test/recall-model.test.ts` runs `model.onnx` on onnxruntime-node and checks
  the sample's greedy answers and logits (batch 1, left-padded, and through the cache: prefill the context, decode
  `QUERY`, `k`) and the accuracy on the first 200 test prompts against these.
  Smallest gap between the top two logits: {m['min_top2_logit_gap']['sample']:.3f} (sample), {m['min_top2_logit_gap']['first200']:.3f} (first 200){gap_note}

## Dataset files (`.jsonl`)

One JSON object per line: `prompt` (token ids, BOS first, ending `QUERY k`), `answer` (the value id), `context_len`
(tokens before `QUERY`), `key_pos` (index of the queried key in the prompt; its value is at `key_pos + 1`).
`sample.jsonl` adds `prediction` (torch's greedy answer) and `logits` (torch's last-position logits, 5 decimals).

## How to regenerate

```
apt-get install python3-torch python3-onnx python3-numpy     # Debian 12
apt-get install libopenblas0-pthread                       # optional; or: dpkg-deb -x libopenblas0-pthread_*.deb scratch/openblas
nice -n 10 /usr/bin/python3 scripts/train_recall.py       # trains (about {m['train_wall_s'] / 60:.0f} min here) and writes examples/recall/
```

Versions used: Python {m['versions']['python']}, torch {m['versions']['torch']}, onnx {m['versions']['onnx']}, numpy {m['versions']['numpy']}.
The datasets are reproducible from the seeds; the trained weights are deterministic on one setup but may differ
across CPUs, BLAS libraries or library versions. Options: `--measure N` times N steps and exits; `--from-ckpt`
re-evaluates and re-exports saved weights (`scratch/recall-ckpt.pt`) without training; `--set section.key=value`
overrides a setting for experiments (the committed files use none). Python is only needed to regenerate the model;
prunec never runs it.
"""
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
