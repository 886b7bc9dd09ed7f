"""Slow, loop-based reference implementations written from the papers (float64, numpy, explicit loops).

Nothing here imports ndcam: activations and gradients are captured with a plain forward hook and a full-graph
``torch.autograd.grad``, the weights are computed channel by channel and position by position, and upsampling is a
per-axis loop of half-pixel linear interpolation.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch


def capture_reference(model, layer, x, score_fn):
    """(activations, gradients) of ``layer`` for ``score_fn(model(x))`` (N,), with the whole graph built."""
    store = {}

    def hook(m, i, o):
        store["a"] = o

    h = layer.register_forward_hook(hook)
    try:
        model.eval()
        with torch.enable_grad():
            xx = x.detach().clone().requires_grad_(True)
            out = model(xx)
            scores = score_fn(out)
            (g,) = torch.autograd.grad(scores.sum(), store["a"])
    finally:
        h.remove()
    return store["a"].detach().double().numpy(), g.detach().double().numpy(), out.detach()


def positions(shape):
    return list(itertools.product(*[range(s) for s in shape]))


def ref_gradcam(A, G):
    n, c, *sp = A.shape
    P = positions(sp)
    out = np.zeros([n, *sp])
    for i in range(n):
        for k in range(c):
            w = sum(G[(i, k, *p)] for p in P) / len(P)
            for p in P:
                out[(i, *p)] += w * A[(i, k, *p)]
    return out


def ref_gradcampp(A, G, eps=1e-6):
    n, c, *sp = A.shape
    P = positions(sp)
    out = np.zeros([n, *sp])
    for i in range(n):
        for k in range(c):
            sum_a = sum(A[(i, k, *p)] for p in P)
            w = 0.0
            for p in P:
                g = G[(i, k, *p)]
                if g != 0:
                    alpha = g**2 / (2 * g**2 + sum_a * g**3 + eps)
                    w += alpha * max(g, 0.0)
            for p in P:
                out[(i, *p)] += w * A[(i, k, *p)]
    return out


def ref_xgradcam(A, G, eps=1e-7):
    n, c, *sp = A.shape
    P = positions(sp)
    out = np.zeros([n, *sp])
    for i in range(n):
        for k in range(c):
            sum_a = sum(A[(i, k, *p)] for p in P)
            w = sum(A[(i, k, *p)] * G[(i, k, *p)] for p in P) / (sum_a + eps)
            for p in P:
                out[(i, *p)] += w * A[(i, k, *p)]
    return out


def _per_position(A, G, f):
    n, c, *sp = A.shape
    out = np.zeros([n, *sp])
    for i in range(n):
        for p in positions(sp):
            out[(i, *p)] = sum(f(A[(i, k, *p)], G[(i, k, *p)]) for k in range(c))
    return out


def ref_hirescam(A, G):
    return _per_position(A, G, lambda a, g: g * a)


def ref_elementwise(A, G):
    return _per_position(A, G, lambda a, g: max(g * a, 0.0))


def ref_layercam(A, G):
    return _per_position(A, G, lambda a, g: max(g, 0.0) * a)


def ref_cam(A, W, classes):
    n, c, *sp = A.shape
    out = np.zeros([n, *sp])
    for i in range(n):
        for p in positions(sp):
            out[(i, *p)] = sum(W[classes[i], k] * A[(i, k, *p)] for k in range(c))
    return out


def _pc_projection(X, reference):
    """X: (C, *sp) for one sample. Centre positions, top eigenvector of the channel covariance, project, fix sign."""
    c, *sp = X.shape
    P = positions(sp)
    rows = np.array([[X[(k, *p)] for k in range(c)] for p in P])  # (S, C)
    mean = rows.mean(axis=0)
    rows = rows - mean
    cov = np.zeros((c, c))
    for r in rows:
        cov += np.outer(r, r)
    vals, vecs = np.linalg.eigh(cov)
    v = vecs[:, -1]
    proj = np.array([float(r @ v) for r in rows])
    ref = np.array([reference[p] for p in P])
    ref = ref - ref.mean()
    if float(proj @ ref) < 0:
        proj = -proj
    return proj.reshape(sp)


def ref_eigencam(A):
    return np.stack([_pc_projection(A[i], A[i].sum(0)) for i in range(A.shape[0])])


def ref_eigengradcam(A, G):
    GA = G * A
    return np.stack([_pc_projection(GA[i], GA[i].sum(0)) for i in range(A.shape[0])])


def ref_linear_resize_axis(x, axis, size):
    """Half-pixel (align_corners=False) linear interpolation of one axis, by explicit loops."""
    n_in = x.shape[axis]
    if n_in == size:
        return x
    scale = n_in / size
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (size,))
    for j in range(size):
        src = max((j + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        out[..., j] = (1 - lam) * moved[..., i0] + lam * moved[..., i1]
    return np.moveaxis(out, -1, axis)


def ref_upsample(maps, size):
    out = maps
    for ax, s in enumerate(size):
        out = ref_linear_resize_axis(out, ax + 1, s)
    return out


def ref_normalize(maps):
    out = np.zeros_like(maps)
    for i in range(maps.shape[0]):
        lo, hi = maps[i].min(), maps[i].max()
        if hi - lo > 4 * np.finfo(np.float64).eps * max(abs(hi), abs(lo)):
            out[i] = (maps[i] - lo) / (hi - lo)
    return out


def ref_scorecam_scores(model, x, A, targets):
    """Loop: for each sample and channel, mask the input by the upsampled, min-max normalized channel; score it."""
    n, c = A.shape[:2]
    S = np.zeros((n, c))
    for i in range(n):
        for k in range(c):
            m = ref_upsample(A[i, k][None], x.shape[2:])
            m = ref_normalize(m)[0]
            masked = x[i : i + 1] * torch.as_tensor(m, dtype=x.dtype)
            with torch.no_grad():
                S[i, k] = float(model(masked)[0, targets[i]])
    return S


def ref_ablation_scores(model, layer, x, targets):
    n = x.shape[0]
    store = {}

    def capture(m, i, o):
        store["c"] = o.shape[1]

    h = layer.register_forward_hook(capture)
    with torch.no_grad():
        base = model(x)
    h.remove()
    c = store["c"]
    S = np.zeros((n, c))
    for i in range(n):
        for k in range(c):
            def ablate(m, inp, o, k=k):
                o = o.clone()
                o[:, k] = 0
                return o

            h = layer.register_forward_hook(ablate)
            with torch.no_grad():
                S[i, k] = float(model(x[i : i + 1])[0, targets[i]])
            h.remove()
    y = np.array([float(base[i, targets[i]]) for i in range(n)])
    return y, S


def ref_softmax_rows(S):
    out = np.zeros_like(S)
    for i in range(S.shape[0]):
        e = np.exp(S[i] - S[i].max())
        out[i] = e / e.sum()
    return out


def ref_weighted(A, W):
    n, c, *sp = A.shape
    out = np.zeros([n, *sp])
    for i in range(n):
        for k in range(c):
            out[i] += W[i, k] * A[i, k]
    return out
