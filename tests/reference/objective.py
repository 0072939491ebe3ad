#!/usr/bin/env python3
"""An independent NumPy implementation of nst's objective (docs/objective.md), in float64.

Written for the tests, sharing no code with nst: its own safetensors reader, convolution,
pooling, Gram matrix and hand-written backward pass.

Reads a JSON request on stdin:
  {"weights": path, "pooling": "max"|"avg",
   "content": img, "styles": [img, ...], "blend": [...], "image": img,
   "content_weight": w, "style_weight": w, "tv_weight": w,
   "content_layers": [[name, mult], ...], "style_layers": [[name, mult], ...],
   "grad_out": path}
where img = {"w": W, "h": H, "file": path of H*W*3 little-endian float64 RGB values, 0-255}.
Prints {"total": ..., "content/<l>": ..., "style/<l>": ..., "tv": ...} and writes the
gradient w.r.t. the image's 0-255 RGB values as [3, H, W] little-endian float64 to grad_out.
"""
import json
import struct
import sys

import numpy as np

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
TV_MEAN = np.array([0.485, 0.456, 0.406])
TV_STD = np.array([0.229, 0.224, 0.225])


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        assert info["dtype"] == "F32"
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype="<f4").astype(np.float64).reshape(info["shape"])
    return out, meta


def layer_table(n_conv):
    blocks = {16: [2, 2, 4, 4, 4], 13: [2, 2, 3, 3, 3]}[n_conv]
    table = []
    for b, n in enumerate(blocks, 1):
        for i in range(1, n + 1):
            table.append(("conv", f"conv{b}_{i}"))
            table.append(("relu", f"relu{b}_{i}"))
        table.append(("pool", f"pool{b}"))
    return table


def load_image(spec):
    data = np.fromfile(spec["file"], dtype="<f8").reshape(spec["h"], spec["w"], 3)
    return data


def to_model(rgb, convention):
    if convention.startswith("torchvision"):
        return ((rgb / 255.0 - TV_MEAN) / TV_STD).transpose(2, 0, 1)
    return (rgb[:, :, ::-1] - CAFFE_MEAN_BGR).transpose(2, 0, 1)


def grad_to_pixels(g, convention):
    if convention.startswith("torchvision"):
        return g / (255.0 * TV_STD[:, None, None])
    return g[::-1]


def conv_forward(x, w, b):
    c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    cols = np.empty((c, 3, 3, h, wd))
    for ky in range(3):
        for kx in range(3):
            cols[:, ky, kx] = xp[:, ky : ky + h, kx : kx + wd]
    y = w.reshape(w.shape[0], -1) @ cols.reshape(c * 9, h * wd) + b[:, None]
    return y.reshape(w.shape[0], h, wd)


def conv_backward_input(dy, w, shape):
    c, h, wd = shape
    dcols = (w.reshape(w.shape[0], -1).T @ dy.reshape(dy.shape[0], -1)).reshape(c, 3, 3, h, wd)
    dxp = np.zeros((c, h + 2, wd + 2))
    for ky in range(3):
        for kx in range(3):
            dxp[:, ky : ky + h, kx : kx + wd] += dcols[:, ky, kx]
    return dxp[:, 1:-1, 1:-1]


def pool_windows(x):
    c, h, w = x.shape
    oh, ow = h // 2, w // 2
    win = x[:, : 2 * oh, : 2 * ow].reshape(c, oh, 2, ow, 2).transpose(0, 1, 3, 2, 4).reshape(c, oh, ow, 4)
    return win, oh, ow


def pool_forward(x, kind):
    win, _, _ = pool_windows(x)
    return win.max(axis=-1) if kind == "max" else win.mean(axis=-1)


def pool_backward(x, dy, kind):
    c, h, w = x.shape
    win, oh, ow = pool_windows(x)
    if kind == "max":
        # First maximum in row-major window order, as nst (and PyTorch) break ties.
        onehot = np.zeros_like(win)
        idx = win.argmax(axis=-1)
        np.put_along_axis(onehot, idx[..., None], 1.0, axis=-1)
        dwin = onehot * dy[..., None]
    else:
        dwin = np.repeat(dy[..., None], 4, axis=-1) / 4.0
    dx = np.zeros_like(x)
    dx[:, : 2 * oh, : 2 * ow] = dwin.reshape(c, oh, ow, 2, 2).transpose(0, 1, 3, 2, 4).reshape(c, 2 * oh, 2 * ow)
    return dx


def forward(params, table, x, kind, upto):
    """Returns the list of (name, input, output) per layer up to index `upto`."""
    trace = []
    for op, name in table[: upto + 1]:
        if op == "conv":
            y = conv_forward(x, params[name + ".weight"], params[name + ".bias"])
        elif op == "relu":
            y = np.maximum(x, 0.0)
        else:
            y = pool_forward(x, kind)
        trace.append((op, name, x, y))
        x = y
    return trace


def gram(f):
    c = f.shape[0]
    fh = f.reshape(c, -1)
    return fh @ fh.T / f.size


def main():
    req = json.load(sys.stdin)
    params, meta = read_safetensors(req["weights"])
    convention = meta.get("input_convention", "caffe")
    n_conv = sum(1 for k in params if k.endswith(".weight"))
    table = layer_table(n_conv)
    names = [n for _, n in table]
    kind = req.get("pooling", "max")
    cl = [(n, m) for n, m in req["content_layers"]]
    sl = [(n, m) for n, m in req["style_layers"]]
    deepest = max(names.index(n) for n, _ in cl + sl)

    def acts(x):
        return {name: y for _, name, _, y in forward(params, table, x, kind, deepest)}

    content = to_model(load_image(req["content"]), convention)
    ca = acts(content)
    blend = np.array(req.get("blend") or [1.0] * len(req["styles"]), dtype=np.float64)
    blend = blend / blend.sum()
    targets = {n: 0.0 for n, _ in sl}
    for beta, s in zip(blend, req["styles"]):
        sa = acts(to_model(load_image(s), convention))
        for n, _ in sl:
            targets[n] = targets[n] + beta * gram(sa[n])

    rgb = load_image(req["image"])
    x = to_model(rgb, convention)
    trace = forward(params, table, x, kind, deepest)
    out = {name: y for _, name, _, y in trace}
    terms = {}
    dout = {}
    for n, m in cl:
        f, p = out[n], ca[n]
        w = req["content_weight"] * m
        terms["content/" + n] = w * np.mean((f - p) ** 2)
        dout[n] = dout.get(n, 0.0) + w * 2.0 * (f - p) / f.size
    for n, m in sl:
        f = out[n]
        c = f.shape[0]
        g = gram(f)
        w = req["style_weight"] * m
        terms["style/" + n] = w * np.mean((g - targets[n]) ** 2)
        dg = w * 2.0 * (g - targets[n]) / (c * c)
        df = ((dg + dg.T) @ f.reshape(c, -1) / f.size).reshape(f.shape)
        dout[n] = dout.get(n, 0.0) + df
    dv = x[:, 1:, :] - x[:, :-1, :]
    dh = x[:, :, 1:] - x[:, :, :-1]
    wtv = req["tv_weight"]
    terms["tv"] = wtv * (np.sum(dv**2) + np.sum(dh**2))
    gx = np.zeros_like(x)
    gx[:, 1:, :] += 2 * wtv * dv
    gx[:, :-1, :] -= 2 * wtv * dv
    gx[:, :, 1:] += 2 * wtv * dh
    gx[:, :, :-1] -= 2 * wtv * dh

    # Backward through the layers.
    grad = 0.0
    for op, name, inp, y in reversed(trace):
        grad = grad + dout.get(name, 0.0)
        if np.isscalar(grad):
            continue
        if op == "conv":
            grad = conv_backward_input(grad, params[name + ".weight"], inp.shape)
        elif op == "relu":
            grad = grad * (y > 0)
        else:
            grad = pool_backward(inp, grad, kind)
    gx = gx + grad

    grad_to_pixels(gx, convention).astype("<f8").tofile(req["grad_out"])
    result = {"total": float(sum(terms.values()))}
    result.update({k: float(v) for k, v in terms.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
