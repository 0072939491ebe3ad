#!/usr/bin/env python3
"""PyTorch implementation of nst's objective (docs/objective.md), for side-by-side timing.

Same weights (read from nst's safetensors file), same inputs, same objective, L-BFGS with
history 100 and step 1 without line search. Prints one line: `seconds_per_iteration peak_mb
first_total`, where peak memory is the GPU's peak allocation on CUDA and the process's peak
RSS on the CPU.

usage: render_bench.py WEIGHTS CONTENT.f32 STYLE.f32 SIZE ITERS DEVICE [render|gradient] [f32|bf16]
(the images are SIZE x SIZE x 3 little-endian float32 RGB files, 0-255); `gradient` times
the objective and its gradient alone, without the optimizer and its history; `bf16` runs the
network under bf16 autocast (the optimizer and the image stay f32).
"""
import json
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

BLOCKS = [2, 2, 4, 4, 4]
MEAN_BGR = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)


def weights(path, device):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype="<f4").reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy()).to(device)
    return out


def features(w, x, wanted):
    feats = {}
    deepest = max(wanted)
    idx = 0
    for b, n in enumerate(BLOCKS, 1):
        for i in range(1, n + 1):
            x = F.relu(F.conv2d(x, w[f"conv{b}_{i}.weight"], w[f"conv{b}_{i}.bias"], padding=1))
            name = f"relu{b}_{i}"
            if name in wanted:
                feats[name] = x
            if name == deepest_name(wanted):
                return feats
        x = F.max_pool2d(x, 2, 2)
    return feats


def deepest_name(wanted):
    order = [f"relu{b}_{i}" for b, n in enumerate(BLOCKS, 1) for i in range(1, n + 1)]
    return max(wanted, key=order.index)


def gram(f):
    c = f.shape[1]
    fh = f.reshape(c, -1)
    return fh @ fh.t() / f.numel()


def to_model(path, size, device):
    rgb = np.fromfile(path, dtype="<f4").reshape(size, size, 3)
    bgr = torch.from_numpy(rgb[:, :, ::-1].copy()).permute(2, 0, 1).unsqueeze(0)
    return (bgr - MEAN_BGR).contiguous().to(device)


def main():
    wpath, cpath, spath, size, iters, device = sys.argv[1:7]
    kind = sys.argv[7] if len(sys.argv) > 7 else "render"
    # f32: strict f32 (no TF32, cuDNN's heuristics); tf32: as users get PyTorch on a GPU
    # (TF32 in convolutions and matmuls, cudnn.benchmark timing its algorithms); bf16: f32
    # with bf16 autocast (the CPU's comparison for nst --precision fast).
    mode = sys.argv[8] if len(sys.argv) > 8 else "f32"
    if mode not in ("f32", "tf32", "bf16"):
        sys.exit(f"unknown mode {mode!r} (expected f32, tf32 or bf16)")
    bf16 = mode == "bf16"
    size, iters = int(size), int(iters)
    dev = torch.device(device)
    tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = tf32
    w = weights(wpath, dev)
    content_layers = ["relu4_2"]
    style_layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    with torch.no_grad():
        c = features(w, to_model(cpath, size, dev), set(content_layers))
        s = features(w, to_model(spath, size, dev), set(style_layers))
        targets_c = {k: c[k] for k in content_layers}
        targets_s = {k: gram(s[k]) for k in style_layers}
    x = to_model(cpath, size, dev).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=100, tolerance_grad=-1, tolerance_change=-1)
    first = []

    def closure():
        opt.zero_grad()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            f = features(w, x, set(content_layers + style_layers))
        f = {k: v.float() for k, v in f.items()}
        loss = sum(5.0 * torch.mean((f[k] - targets_c[k]) ** 2) for k in content_layers)
        loss = loss + sum(100.0 * torch.mean((gram(f[k]) - targets_s[k]) ** 2) for k in style_layers)
        loss = loss + 1e-3 * (torch.sum((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2) + torch.sum((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2))
        loss.backward()
        if not first:
            first.append(loss.item())
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step = closure if kind == "gradient" else (lambda: opt.step(closure))
    step()  # warm-up
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    secs = (time.perf_counter() - t) / iters
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1e6
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    print(f"{secs} {peak} {first[0]}")


if __name__ == "__main__":
    main()
