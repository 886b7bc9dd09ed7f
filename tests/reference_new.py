"""Slow float64 loop references for the methods of issue 10 (FEM, KPCA-CAM, ShapleyCAM, Finer-CAM, DFF, RandomCAM,
SS-CAM, IS-CAM, Smooth Grad-CAM++, LeGrad, LayerCAM's hierarchical fusion), written from the papers.

Nothing here imports ndcam. Random draws (noise, NMF starting points) are *inputs*: the tests take them from ndcam's
seeding so both sides use the same numbers, and the references only check what is done with them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .reference import positions, ref_normalize, ref_upsample


def ref_weighted(A, W):
    """ReLU-free sum_c W[i, c] A[i, c] by loops."""
    n, c, *sp = A.shape
    out = np.zeros([n, *sp])
    for i in range(n):
        for k in range(c):
            for p in positions(sp):
                out[(i, *p)] += W[i, k] * A[(i, k, *p)]
    return out


def ref_fem(A, k=2.0):
    n, c, *sp = A.shape
    P = positions(sp)
    out = np.zeros([n, *sp])
    for i in range(n):
        for ch in range(c):
            vals = [A[(i, ch, *p)] for p in P]
            mu = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
            for p in P:
                if A[(i, ch, *p)] >= mu + k * sd:
                    out[(i, *p)] += mu
    return out


def ref_kpca(A, gamma=None):
    """RBF kernel PCA of the positions: sqrt(lambda_1) v_1 of the doubly centred kernel, sign along the channel sum."""
    n, c, *sp = A.shape
    P = positions(sp)
    g = 1.0 / c if gamma is None else gamma
    out = np.zeros([n, *sp])
    for i in range(n):
        X = np.array([[A[(i, ch, *p)] for ch in range(c)] for p in P])
        X = X - X.mean(0)
        s = len(P)
        K = np.zeros((s, s))
        for a in range(s):
            for b in range(s):
                K[a, b] = math.exp(-g * sum((X[a, ch] - X[b, ch]) ** 2 for ch in range(c)))
        row, col, tot = K.mean(1), K.mean(0), K.mean()
        Kc = np.array([[K[a, b] - row[a] - col[b] + tot for b in range(s)] for a in range(s)])
        vals, vecs = np.linalg.eigh(Kc)
        proj = vecs[:, -1] * math.sqrt(max(vals[-1], 0.0))
        ref = np.array([sum(A[(i, ch, *p)] for ch in range(c)) for p in P])
        if (proj * (ref - ref.mean())).sum() < 0:
            proj = -proj
        for j, p in enumerate(P):
            out[(i, *p)] = proj[j]
    return out


def ref_nmf(V, W0, H0, iterations, eps=1e-12):
    """Lee & Seung multiplicative updates, element by element (V (C, S), W0 (C, k), H0 (k, S) already scaled)."""
    W, H = W0.copy(), H0.copy()
    c, s = V.shape
    k = W.shape[1]
    for _ in range(iterations):
        WtV = np.array([[sum(W[a, j] * V[a, b] for a in range(c)) for b in range(s)] for j in range(k)])
        WtW = np.array([[sum(W[a, j] * W[a, m] for a in range(c)) for m in range(k)] for j in range(k)])
        WtWH = WtW @ H
        H = np.array([[H[j, b] * WtV[j, b] / (WtWH[j, b] + eps) for b in range(s)] for j in range(k)])
        VHt = V @ H.T
        WHHt = W @ (H @ H.T)
        W = np.array([[W[a, j] * VHt[a, j] / (WHHt[a, j] + eps) for j in range(k)] for a in range(c)])
    return W, H


def ref_dff(A, G, W0, H0, k, iterations):
    """Per sample: NMF of A - min_c, concepts by decreasing energy, map = sum_j mean_s(W^T G)_j H_j."""
    n, c, *sp = A.shape
    P = positions(sp)
    out = np.zeros([n, *sp])
    for i in range(n):
        V = np.array([[A[(i, ch, *p)] for p in P] for ch in range(c)])
        V = V - V.min(1, keepdims=True)
        scale = math.sqrt(V.mean() / k)
        W, H = ref_nmf(V, W0 * scale, H0 * scale, iterations)
        Gi = np.array([[G[(i, ch, *p)] for p in P] for ch in range(c)])
        for j in range(k):
            w = sum(W[ch, j] * Gi[ch, b] for ch in range(c) for b in range(len(P))) / len(P)
            for b, p in enumerate(P):
                out[(i, *p)] += w * H[j, b]
    return out


def ref_rest(out, classes):
    """ReST: 2 z_t - log sum_j exp z_j, per sample."""
    z = out.detach().double().numpy()
    return np.array([2 * z[i, t] - math.log(sum(math.exp(v) for v in z[i])) for i, t in enumerate(classes)])


def ref_shapley_fd(model, layer, x, score_fn, eps=1e-5):
    """(A, G, HA): HA by central differences of the gradient along A itself, G(A(1+e)) - G(A(1-e)) / 2e."""

    def grads_at(scale):
        store = {}

        def hook(m, i, o):
            o = o * scale
            store["a"] = o
            return o

        h = layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                out = model(x.detach().clone().requires_grad_(True))
                (g,) = torch.autograd.grad(score_fn(out).sum(), store["a"])
        finally:
            h.remove()
        return store["a"].detach().double().numpy(), g.double().numpy()

    A, G = grads_at(1.0)
    _, Gp = grads_at(1.0 + eps)
    _, Gm = grads_at(1.0 - eps)
    return A, G, (Gp - Gm) / (2 * eps)


def ref_shapley(A, G, HA):
    n, c, *sp = A.shape
    P = positions(sp)
    W = np.zeros((n, c))
    for i in range(n):
        for k in range(c):
            W[i, k] = sum(G[(i, k, *p)] - 0.5 * HA[(i, k, *p)] for p in P) / len(P)
    return ref_weighted(A, W)


def ref_finer_score_fn(out0, targets, n_similar, alpha):
    """The Finer-CAM score as a function of the output, with comparison classes fixed on ``out0``."""
    z0 = out0.detach().double().numpy()
    comps = []
    for i, t in enumerate(targets):
        d = sorted((abs(z0[i, j] - z0[i, t]), j) for j in range(z0.shape[1]) if j != t)
        comps.append([j for _, j in d[:n_similar]])

    def score(out):
        p = torch.softmax(out, dim=1)
        rows = []
        for i, t in enumerate(targets):
            num = sum(p[i, j] * (out[i, t] - alpha * out[i, j]) for j in comps[i])
            den = sum(p[i, j] for j in comps[i]) + 1e-9
            rows.append(num / den)
        return torch.stack(rows)

    return score, comps


def ref_masked_score_path(model, x, A, targets, transform, n_samples):
    """Mean over i of the target score of x * transform(mask_c, i, c), the mask being Score-CAM's."""
    n, c = A.shape[:2]
    S = np.zeros((n, c))
    for i in range(n):
        for k in range(c):
            m = ref_normalize(ref_upsample(A[i, k][None], x.shape[2:]))[0]
            total = 0.0
            for s in range(n_samples):
                mk = transform(m, s, k)
                with torch.no_grad():
                    total += float(model(x[i : i + 1] * torch.as_tensor(mk, dtype=x.dtype))[0, targets[i]])
            S[i, k] = total / n_samples
    return S


def ref_softmax(S):
    out = np.zeros_like(S)
    for i in range(S.shape[0]):
        e = [math.exp(v - S[i].max()) for v in S[i]]
        out[i] = [v / sum(e) for v in e]
    return out


def ref_smoothgradcampp(A, grads, eps=1e-6):
    """Clean activations A, list of noisy gradients; alpha = D2 / (2 D2 + sum(A) D3), w = sum alpha relu(D1)."""
    n, c, *sp = A.shape
    P = positions(sp)
    m = len(grads)
    W = np.zeros((n, c))
    for i in range(n):
        for k in range(c):
            sum_a = sum(A[(i, k, *p)] for p in P)
            for p in P:
                gs = [g[(i, k, *p)] for g in grads]
                d1, d2, d3 = sum(gs) / m, sum(v**2 for v in gs) / m, sum(v**3 for v in gs) / m
                if d2 != 0:
                    W[i, k] += d2 / (2 * d2 + sum_a * d3 + eps) * max(d1, 0.0)
    return ref_weighted(A, W)


def ref_legrad(grads, prefix, grid):
    """grads: list over layers of (N, H, Q, K) gradients of the score (the model's, or layer l's read-out score
    s^l for layer l) w.r.t. attention probabilities. Mean over heads and queries of the positive part, prefix keys
    dropped, keys on the grid, mean over layers (normalization left to the caller)."""
    n = grads[0].shape[0]
    out = np.zeros([n, *grid])
    cells = positions(grid)
    for g in grads:
        _, h, q, _ = g.shape
        for i in range(n):
            for j, cell in enumerate(cells):
                out[(i, *cell)] += sum(max(g[i, a, b, prefix + j], 0.0) for a in range(h) for b in range(q)) / (h * q)
    return out / len(grads)


def ref_layer_norm(v, weight, bias, eps=1e-5):
    """LayerNorm over the last axis, written out (differentiable torch ops)."""
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return (v - mu) / torch.sqrt(var + eps) * weight + bias


def ref_readout(z, norm, head, pool, norm_first, query=None, eps=1e-5):
    """LeGrad's read-out of a block's tokens z (N, T, D): the model's final LayerNorm (``norm = (weight, bias)``),
    the pooling (``"cls"``: token 0, ``"mean"``: all tokens, ``"patch-mean"``: tokens 1:, ``"map"``: attention of a
    learned ``query`` (D,) over tokens 1:, softmax of the scaled dot products) before or after it, and the linear head
    (``head = (W, b)``), the norm's ``eps``: class scores (N, classes)."""

    def attention_pool(t):
        t = t[:, 1:]
        w = torch.softmax(t @ query / math.sqrt(t.shape[-1]), dim=1)
        return (w[..., None] * t).sum(1)

    pools = {"cls": lambda t: t[:, 0], "mean": lambda t: t.mean(1), "patch-mean": lambda t: t[:, 1:].mean(1),
             "map": attention_pool}
    h = pools[pool](ref_layer_norm(z, *norm, eps)) if norm_first else ref_layer_norm(pools[pool](z), *norm, eps)
    return h @ head[0].T + head[1]


def ref_layerwise_grads(tokens, attn, readout, score):
    """Per-layer LeGrad gradients: for each layer l, d s^l / d A^l with s^l = score(readout(Z^l)) summed over the
    batch (samples are independent), Z^l the tokens after block l and A^l its attention probabilities (both from one
    forward with autograd). Returns numpy arrays, one per layer."""
    out = []
    for z, a in zip(tokens, attn):
        (g,) = torch.autograd.grad(score(readout(z)).sum(), a, retain_graph=True)
        out.append(g.detach().numpy())
    return out


def ref_mha(q_in, k_in, v_in, proj, heads, key_padding_mask=None, attn_mask=None):
    r"""Multi-head attention written out from the layer's weights, batch-first: ``q_in (N, Q, D)``, ``k_in (N, K,
    Dk)``, ``v_in (N, K, Dv)``; ``proj = (Wq, Wk, Wv, bq, bk, bv, Wo, bo)`` (``nn.MultiheadAttention``'s
    ``in_proj_weight``/``in_proj_bias`` split in three, or its ``q/k/v_proj_weight``, and ``out_proj``).
    ``key_padding_mask (N, K)``: True = ignored key; ``attn_mask (Q, K)``: True = not allowed, or added to the
    logits when floating. Returns ``(output (N, Q, D), A (N, heads, Q, K))``: the probabilities
    :math:`A = \mathrm{softmax}(q k^T / \sqrt{d_h} + \mathrm{mask})` and the output computed from them, so
    ``d output / d A`` is the layer's own."""
    wq, wk, wv, bq, bk, bv, wo, bo = proj
    n, tq, d = q_in.shape
    tk = k_in.shape[1]
    dh = d // heads

    def split(t, length):
        return t.reshape(n, length, heads, -1).transpose(1, 2)

    q, k, v = split(q_in @ wq.T + bq, tq), split(k_in @ wk.T + bk, tk), split(v_in @ wv.T + bv, tk)
    logits = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if attn_mask is not None:
        logits = logits.masked_fill(attn_mask, -math.inf) if attn_mask.dtype == torch.bool else logits + attn_mask
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], -math.inf)
    a = torch.softmax(logits, dim=-1)
    out = (a @ v).transpose(1, 2).reshape(n, tq, d) @ wo.T + bo
    return out, a


def ref_layercam_fusion(maps, size, gamma=2.0):
    """maps: list of (N, *S_l) non-negative LayerCAM maps, shallow first. Shallow: tanh(gamma M / max M); deepest:
    M / max M; each upsampled to ``size``; element-wise maximum; min-max normalized."""
    scaled = []
    for li, m in enumerate(maps):
        s = np.zeros_like(m)
        for i in range(m.shape[0]):
            peak = m[i].max()
            if peak > 0:
                s[i] = np.tanh(gamma * m[i] / peak) if li < len(maps) - 1 else m[i] / peak
        scaled.append(ref_upsample(s, size))
    fused = scaled[0]
    for s in scaled[1:]:
        fused = np.maximum(fused, s)
    return ref_normalize(fused)
