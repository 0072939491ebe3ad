#!/usr/bin/env python3
"""The classic recipe in PyTorch, for `cargo xtask bench time-to-image`.

Noise start (Gaussian, sigma 0.001 in model space, as nst's `--init noise`), one scale,
`torch.optim.LBFGS` with history 100, step 1 and no line search, on nst's pinned objective
(docs/objective.md; the same one as render_bench.py, whose network and loss it imports).

usage:
  classic.py trajectory WEIGHTS CONTENT.rgb STYLE.rgb ITERS EVERY OUTDIR SEED
      writes OUTDIR/iter_NNNN.rgb (8-bit RGB, clamped and rounded: what a user would save)
      at iteration 0 and every EVERY iterations up to ITERS, then OUTDIR/done
  classic.py time WEIGHTS CONTENT.rgb STYLE.rgb ITERS SEED
      prints the mean seconds per iteration over ITERS iterations after one warm-up
The .rgb files are a `W H` header line and then W x H x 3 bytes of 8-bit RGB, row-major, so
that no image library is needed (the benchmark writes them beside the PNGs it scores).
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from render_bench import MEAN_BGR, features, gram, weights  # noqa: E402

CONTENT_LAYERS = ["relu4_2"]
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def read_rgb(path):
    """An 8-bit RGB raw file with a `W H\\n` header, as model-space BGR minus the mean."""
    with open(path, "rb") as f:
        w, h = (int(v) for v in f.readline().split())
        rgb = np.frombuffer(f.read(), dtype=np.uint8).reshape(h, w, 3).astype(np.float32)
    bgr = torch.from_numpy(rgb[:, :, ::-1].copy()).permute(2, 0, 1).unsqueeze(0)
    return (bgr - MEAN_BGR).contiguous(), w, h


def write_rgb(path, x):
    """Model space to 8-bit RGB (clamped, rounded half away from zero), atomically."""
    bgr = (x.detach() + MEAN_BGR)[0].permute(1, 2, 0).numpy()
    rgb = np.clip(bgr[:, :, ::-1], 0.0, 255.0)
    out = np.floor(rgb + 0.5).astype(np.uint8)
    h, w, _ = out.shape
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(f"{w} {h}\n".encode())
        f.write(out.tobytes())
    os.replace(tmp, path)


def setup(wpath, cpath, spath, seed):
    w = weights(wpath, torch.device("cpu"))
    content, cw, ch = read_rgb(cpath)
    style, _, _ = read_rgb(spath)
    with torch.no_grad():
        c = features(w, content, set(CONTENT_LAYERS))
        s = features(w, style, set(STYLE_LAYERS))
        tc = {k: c[k] for k in CONTENT_LAYERS}
        ts = {k: gram(s[k]) for k in STYLE_LAYERS}
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(1, 3, ch, cw, generator=gen) * 1e-3).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [x], lr=1, max_iter=1, history_size=100, tolerance_grad=-1, tolerance_change=-1
    )

    def closure():
        opt.zero_grad()
        f = features(w, x, set(CONTENT_LAYERS + STYLE_LAYERS))
        loss = sum(5.0 * torch.mean((f[k] - tc[k]) ** 2) for k in CONTENT_LAYERS)
        loss = loss + sum(100.0 * torch.mean((gram(f[k]) - ts[k]) ** 2) for k in STYLE_LAYERS)
        loss = loss + 1e-3 * (
            torch.sum((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2)
            + torch.sum((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2)
        )
        loss.backward()
        return loss

    return x, opt, closure


def main():
    mode = sys.argv[1]
    if mode == "trajectory":
        wpath, cpath, spath, iters, every, outdir, seed = sys.argv[2:9]
        iters, every = int(iters), int(every)
        x, opt, closure = setup(wpath, cpath, spath, int(seed))
        os.makedirs(outdir, exist_ok=True)
        write_rgb(os.path.join(outdir, "iter_0000.rgb"), x)
        for it in range(1, iters + 1):
            opt.step(closure)
            if it % every == 0 or it == iters:
                write_rgb(os.path.join(outdir, f"iter_{it:04}.rgb"), x)
        open(os.path.join(outdir, "done"), "w").close()
    elif mode == "time":
        wpath, cpath, spath, iters, seed = sys.argv[2:7]
        x, opt, closure = setup(wpath, cpath, spath, int(seed))
        opt.step(closure)  # warm-up
        t = time.perf_counter()
        for _ in range(int(iters)):
            opt.step(closure)
        print((time.perf_counter() - t) / int(iters))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
