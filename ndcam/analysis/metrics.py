r"""Evaluation of maps on any rank, batched, on the model's device.

Faithfulness (need the model):

* :func:`deletion_auc` / :func:`insertion_auc` -- RISE (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421):
  remove (insert) input elements in the order of the map, in ``steps`` equal steps, and take the area under the
  target-class probability curve over the removed (inserted) fraction in ``[0, 1]`` (trapezoid rule). Lower deletion
  and higher insertion AUC are better.
* :func:`average_drop` / :func:`increase_in_confidence` -- Grad-CAM++ (Chattopadhay et al. 2018):
  :math:`100\,\frac{1}{N}\sum_i \max(0, Y_i - O_i) / Y_i` and :math:`100\,\frac{1}{N}\sum_i [Y_i < O_i]` with
  :math:`Y` the probability on the input and :math:`O` on the input multiplied by the map.
* :func:`road` -- ROAD (Rong et al. 2022, https://arxiv.org/abs/2202.00449): remove the most (MoRF) or least (LeRF)
  relevant fraction of elements and impute them by *noisy linear imputation*, generalized here to N-D
  neighbourhoods: each removed element equals the weighted mean of its :math:`3^r - 1` neighbours (weight
  :math:`\propto 1/\lVert o\rVert_1`, which gives the paper's 1/6 and 1/12 in 2D), a sparse linear system solved per
  sample, plus Gaussian noise.

Localization (need ground-truth masks): :func:`pointing_game` (with a tolerance in samples/pixels/voxels),
:func:`energy_pointing_game` (Score-CAM), :func:`mask_iou`.

Sanity: :func:`randomization_sanity` -- cascading model-parameter randomization (Adebayo et al. 2018,
https://arxiv.org/abs/1810.03292), Spearman rank correlation of each map before and after.

Maps are ``(N, *spatial)`` (upsampled to the input's size when needed); masks are boolean ``(N, *spatial)``.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core import ops
from ..core.capture import model_lock
from ..core.errors import ConstantMapWarning, InputError, InputTypeError, model_forward

__all__ = [
    "deletion_auc",
    "insertion_auc",
    "deletion_curve",
    "average_drop",
    "increase_in_confidence",
    "road",
    "RoadResult",
    "pointing_game",
    "energy_pointing_game",
    "mask_iou",
    "randomization_sanity",
    "SanityResult",
    "spearman",
]


# ------------------------------------------------------------------------------------------------ helpers
def _maps_like(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor):
        raise InputTypeError(f"maps must be a tensor (N, *spatial), got {type(maps).__name__}")
    if maps.ndim == x.ndim:  # (N, 1, *S) -> (N, *S)
        maps = maps[:, 0]
    if maps.ndim != x.ndim - 1 or maps.shape[0] != x.shape[0]:
        raise InputError(f"maps must be (N={x.shape[0]}, *spatial) for x of shape {tuple(x.shape)}, got {tuple(maps.shape)}")
    maps = maps.to(device=x.device, dtype=torch.float32)
    if tuple(maps.shape[1:]) != tuple(x.shape[2:]):
        maps = ops.upsample(maps, x.shape[2:])
    return maps


def _probabilities(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Class probabilities (softmax, or sigmoid for a single logit) in batches, eval mode, no grad."""
    outs = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            with model_forward(model, x):
                out = model(x[s : s + batch_size])
            if out.ndim == 1:
                out = out[:, None]
            if out.shape[1] == 1:
                p = torch.sigmoid(out)
                outs.append(torch.cat([1 - p, p], dim=1))
            else:
                outs.append(torch.softmax(out, dim=1))
    return torch.cat(outs)


class _Eval:
    """Eval mode for the duration of a metric, restoring every module's flag afterwards. The model's modules are
    held (:func:`ndcam.capture.model_lock`) meanwhile, so no explanation on a model sharing them runs in between and
    saves -- then restores -- the metric's eval flags.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.lock = model_lock(model)

    def __enter__(self):
        self.lock.__enter__()
        self.flags = {m: m.training for m in self.model.modules()}
        try:
            self.model.eval()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc):
        try:
            for m, f in self.flags.items():
                m.training = f
        finally:
            self.lock.__exit__(*exc)


def _targets(model: nn.Module, x: torch.Tensor, targets, batch_size: int) -> torch.Tensor:
    probs = _probabilities(model, x, batch_size)
    if targets is None:
        return probs.argmax(1)
    t = torch.as_tensor(targets, device=x.device).long()
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    if t.shape != (x.shape[0],):
        raise InputError(f"targets must be None, an int or one class per sample (N={x.shape[0]}), got shape {tuple(t.shape)}")
    if int(t.min()) < 0 or int(t.max()) >= probs.shape[1]:
        raise InputError(f"targets out of range for {probs.shape[1]} classes")
    return t


def _baseline(x: torch.Tensor, baseline) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x).expand_as(x)
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x)
    if baseline == "blur":
        return _blur(x)
    raise InputError(f"baseline must be 'zero', 'mean', 'blur' or a tensor, got {baseline!r}")


def _blur(x: torch.Tensor, sigma_frac: float = 0.05) -> torch.Tensor:
    """Separable Gaussian blur over every spatial axis (sigma = 5% of each axis, as a RISE-like blurred canvas)."""
    out = x
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        sigma = max(1.0, sigma_frac * n)
        half = min(n - 1, int(3 * sigma))
        k = torch.exp(-0.5 * (torch.arange(-half, half + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
        k = k / k.sum()
        moved = out.movedim(axis, -1)
        flat = moved.reshape(-1, 1, n)
        flat = torch.nn.functional.pad(flat, (half, half), mode="replicate" if half < n else "constant")
        flat = torch.nn.functional.conv1d(flat, k.reshape(1, 1, -1))
        out = flat.reshape(moved.shape).movedim(-1, axis)
    return out


def _order(maps: torch.Tensor) -> torch.Tensor:
    """Positions sorted from most to least relevant, ``(N, P)``; ties broken by position (stable)."""
    return torch.sort(maps.reshape(maps.shape[0], -1), dim=1, descending=True, stable=True).indices


# ------------------------------------------------------------------------------------------------ RISE
def deletion_curve(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets=None, *, steps: int = 20,
                   baseline="zero", insertion: bool = False, batch_size: int = 64) -> torch.Tensor:
    """Target probability after removing (or, with ``insertion=True``, inserting) the top fraction ``i / steps`` of
    elements by the map, ``i = 0..steps``: ``(N, steps + 1)``.
    """
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    with _Eval(model):
        maps = _maps_like(maps, x)
        t = _targets(model, x, targets, batch_size)
        base = _baseline(x, baseline)
        n, p = x.shape[0], maps[0].numel()
        rank_of = torch.empty_like(_order(maps))
        rank_of.scatter_(1, _order(maps), torch.arange(p, device=x.device).expand(n, p))
        curve = []
        per = max(1, batch_size // n)
        fractions = list(range(steps + 1))
        for s0 in range(0, len(fractions), per):
            chunk = fractions[s0 : s0 + per]
            counts = torch.tensor([round(i * p / steps) for i in chunk], device=x.device)
            sel = (rank_of[None] < counts[:, None, None]).reshape(len(chunk), n, 1, *x.shape[2:])
            if insertion:
                batch = torch.where(sel, x[None], base[None])
            else:
                batch = torch.where(sel, base[None], x[None])
            probs = _probabilities(model, batch.reshape(-1, *x.shape[1:]), batch_size)
            probs = probs.reshape(len(chunk), n, -1).gather(2, t[None, :, None].expand(len(chunk), n, 1))[..., 0]
            curve.append(probs.T)
        return torch.cat(curve, dim=1)


def _auc(curve: torch.Tensor) -> torch.Tensor:
    steps = curve.shape[1] - 1
    return ((curve[:, 1:] + curve[:, :-1]) / 2).sum(1) / steps


def deletion_auc(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets=None, *, steps: int = 20,
                 baseline="zero", batch_size: int = 64) -> torch.Tensor:
    """Area under the deletion curve, ``(N,)`` (lower is better). ``baseline``: 'zero', 'mean', 'blur' or a tensor."""
    return _auc(deletion_curve(model, x, maps, targets, steps=steps, baseline=baseline, batch_size=batch_size))


def insertion_auc(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets=None, *, steps: int = 20,
                  baseline="blur", batch_size: int = 64) -> torch.Tensor:
    """Area under the insertion curve, ``(N,)`` (higher is better); starts from the blurred input by default."""
    return _auc(deletion_curve(model, x, maps, targets, steps=steps, baseline=baseline, insertion=True,
                               batch_size=batch_size))


# ------------------------------------------------------------------------------------------------ Grad-CAM++
def _drop_terms(model, x, maps, targets, batch_size):
    with _Eval(model):
        maps = _maps_like(maps, x)
        t = _targets(model, x, targets, batch_size)
        y = _probabilities(model, x, batch_size).gather(1, t[:, None])[:, 0]
        o = _probabilities(model, x * maps[:, None], batch_size).gather(1, t[:, None])[:, 0]
    return y, o


def average_drop(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets=None, *, batch_size: int = 64) -> float:
    """Average Drop in %: ``100 * mean(max(0, Y - O) / Y)`` (lower is better)."""
    y, o = _drop_terms(model, x, maps, targets, batch_size)
    return float(100 * (torch.clamp(y - o, min=0) / y.clamp(min=1e-12)).mean())


def increase_in_confidence(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets=None, *,
                           batch_size: int = 64) -> float:
    """Increase in Confidence in %: ``100 * mean(Y < O)`` (higher is better)."""
    y, o = _drop_terms(model, x, maps, targets, batch_size)
    return float(100 * (y < o).float().mean())


# ------------------------------------------------------------------------------------------------ ROAD
def _neighbour_offsets(rank: int) -> list[tuple[tuple[int, ...], float]]:
    offs = [o for o in itertools.product((-1, 0, 1), repeat=rank) if any(o)]
    w = np.array([1.0 / sum(abs(v) for v in o) for o in offs])
    w = w / w.sum()
    return list(zip(offs, w.tolist()))


def noisy_linear_impute(x: torch.Tensor, remove: torch.Tensor, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """Replace the elements of ``x`` ``(C, *S)`` where ``remove`` ``(*S)`` is True by the solution of
    ``v_i = sum_j w_ij v_j`` over each removed element's neighbours (known values enter the right-hand side), plus
    Gaussian noise of std ``noise``. Any rank; one sparse solve, all channels as right-hand sides.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import spsolve

    shape = tuple(remove.shape)
    rm = remove.detach().cpu().numpy().astype(bool)
    vals = x.detach().cpu().double().numpy().reshape(x.shape[0], -1)
    idx = np.flatnonzero(rm.ravel())
    if idx.size == 0:
        return x.clone()
    pos = -np.ones(rm.size, dtype=np.int64)
    pos[idx] = np.arange(idx.size)
    coords = np.stack(np.unravel_index(idx, shape), axis=1)
    rows, cols, data = [np.arange(idx.size)], [np.arange(idx.size)], [np.ones(idx.size)]
    rhs = np.zeros((idx.size, vals.shape[0]))
    wsum = np.zeros(idx.size)
    for off, w in _neighbour_offsets(len(shape)):
        nb = coords + np.array(off)
        ok = np.all((nb >= 0) & (nb < np.array(shape)), axis=1)
        flat = np.ravel_multi_index(tuple(nb[ok].T), shape)
        src = np.flatnonzero(ok)
        wsum[src] += w
        unknown = rm.ravel()[flat]
        rows.append(src[unknown])
        cols.append(pos[flat[unknown]])
        data.append(-w * np.ones(int(unknown.sum())))
        rhs[src[~unknown]] += w * vals[:, flat[~unknown]].T
    # weights renormalized over the neighbours that exist (borders): row i reads wsum_i v_i - sum_j w_ij v_j = rhs_i
    data[0] = wsum
    a = csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(idx.size, idx.size))
    sol = spsolve(a.tocsc(), rhs)
    sol = sol.reshape(idx.size, -1)
    rng = np.random.default_rng(seed)
    out = vals.copy()
    out[:, idx] = sol.T + noise * rng.standard_normal(sol.T.shape)
    return torch.as_tensor(out.reshape(x.shape), dtype=x.dtype, device=x.device)


@dataclass
class RoadResult:
    """ROAD curves. ``morf``/``lerf``: ``(N, len(fractions))`` target probabilities; ``combined``: ``(N,)``
    ``mean_p (lerf - morf) / 2`` (higher is better).
    """

    fractions: list[float]
    morf: torch.Tensor
    lerf: torch.Tensor
    combined: torch.Tensor


def road(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets=None, *,
         fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), noise: float = 0.01, batch_size: int = 64,
         seed: int = 0) -> RoadResult:
    """ROAD with noisy linear imputation on any rank (see the module docstring)."""
    with _Eval(model):
        maps = _maps_like(maps, x)
        t = _targets(model, x, targets, batch_size)
        order = _order(maps)
        n, p = order.shape
        curves = {}
        for name, ordering in (("morf", order), ("lerf", order.flip(1))):
            imputed = []
            for f in fractions:
                k = int(round(f * p))
                for i in range(n):
                    remove = torch.zeros(p, dtype=torch.bool, device=x.device)
                    remove[ordering[i, :k]] = True
                    imputed.append(noisy_linear_impute(x[i], remove.reshape(x.shape[2:]), noise, seed + i))
            probs = _probabilities(model, torch.stack(imputed), batch_size).gather(
                1, t.repeat(len(fractions))[:, None])[:, 0]
            curves[name] = probs.reshape(len(fractions), n).T
        combined = ((curves["lerf"] - curves["morf"]) / 2).mean(1)
        return RoadResult(list(fractions), curves["morf"], curves["lerf"], combined)


# ------------------------------------------------------------------------------------------------ localization
def _check_masks(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(masks, torch.Tensor):
        masks = torch.as_tensor(np.asarray(masks))
    masks = masks.to(maps.device).bool()
    if masks.shape != maps.shape:
        raise InputError(f"masks {tuple(masks.shape)} must have the maps' shape {tuple(maps.shape)}")
    return maps, masks


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 0) -> torch.Tensor:
    """Hit when the map's maximum lies within ``tolerance`` (Euclidean, in samples/pixels/voxels) of the mask:
    ``(N,)`` bool. A sample with an empty mask is a miss. Ties for the maximum: the first position counts.
    """
    maps, masks = _check_masks(maps, masks)
    n, spatial = maps.shape[0], maps.shape[1:]
    peak = maps.reshape(n, -1).argmax(1)
    coords = torch.stack(torch.unravel_index(peak, spatial), dim=1).float()  # (N, r)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, device=maps.device, dtype=torch.float32) for s in spatial],
                                      indexing="ij"), dim=-1).reshape(-1, len(spatial))  # (P, r)
    dist = torch.cdist(coords[:, None, :], grid[None].expand(n, -1, -1))[:, 0]  # (N, P)
    return (masks.reshape(n, -1) & (dist <= tolerance + 1e-9)).any(1)


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the map's energy inside the mask, ``sum(map * mask) / sum(map)``: ``(N,)`` (0 for an all-zero map)."""
    maps, masks = _check_masks(maps, masks)
    m = maps.clamp(min=0).reshape(maps.shape[0], -1).float()
    total = m.sum(1)
    inside = (m * masks.reshape(maps.shape[0], -1)).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total))


def mask_iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """IoU of ``map >= threshold * max(map)`` with the mask, ``(N,)``."""
    maps, masks = _check_masks(maps, masks)
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    binary = flat >= threshold * flat.amax(1, keepdim=True)
    binary &= flat.amax(1, keepdim=True) > 0
    mk = masks.reshape(n, -1)
    inter = (binary & mk).sum(1).float()
    union = (binary | mk).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


# ------------------------------------------------------------------------------------------------ sanity
def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of ``(N, ...)`` tensors (average ranks for ties), ``(N,)``."""
    from scipy.stats import rankdata

    a_np = a.reshape(a.shape[0], -1).detach().cpu().double().numpy()
    b_np = b.reshape(b.shape[0], -1).detach().cpu().double().numpy()
    out = []
    for u, v in zip(a_np, b_np):
        ru, rv = rankdata(u), rankdata(v)
        ru, rv = ru - ru.mean(), rv - rv.mean()
        den = np.sqrt((ru**2).sum() * (rv**2).sum())
        out.append(float((ru * rv).sum() / den) if den > 0 else 0.0)
    return torch.tensor(out)


@dataclass
class SanityResult:
    """Cascading randomization: ``layers[i]`` is the last module randomized at step ``i`` (from the output side),
    ``correlations[i]`` the per-sample Spearman correlation ``(N,)`` of the maps with the original maps.
    ``final`` is the mean correlation once every layer is randomized; ``passed`` is ``final < threshold``.
    """

    layers: list[str]
    correlations: torch.Tensor
    final: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.final < self.threshold


def randomization_sanity(method_cls: type | str, model: nn.Module, x: torch.Tensor, targets=None, *,
                         layers=None, cascading: bool = True, threshold: float = 0.5, seed: int = 0,
                         **method_options) -> SanityResult:
    """Model-parameter randomization test (Adebayo et al. 2018) for a method, any rank.

    Modules with parameters are re-initialized one by one from the output side (cascading) or one at a time
    (``cascading=False``), on a deep copy of the model; after each step the maps are recomputed (same targets as
    on the original model) and compared with the original ones by Spearman rank correlation. A method whose maps
    stay correlated once all weights are random does not explain the model: ``passed`` is False.

    The original model's maps warn as any call does (a constant map there leaves nothing to compare). A randomized
    copy's map may well come out constant (all zero): that is one of the outcomes the test looks for, it correlates 0
    with the original, and it raises no :class:`~ndcam.ConstantMapWarning` (the copies are not the user's model).
    """
    from ..core.methods import get_method

    cls = get_method(method_cls)
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    names = None if layers is None else [lyr if isinstance(lyr, str) else _name_of(model, lyr) for lyr in layers]
    exp = cls(model, names, **method_options).explain(x, targets)
    fixed = exp.targets if exp.targets is not None else targets
    base = exp.maps
    param_modules = [(n, m) for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    work = copy.deepcopy(model)
    steps, corrs = [], []
    for name, _ in reversed(param_modules):
        if not cascading:
            work = copy.deepcopy(model)
        module = work.get_submodule(name)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()  # the layer's own initialization, as in Adebayo et al.
                if isinstance(module, nn.modules.batchnorm._BatchNorm):  # BatchNorm init is the identity:
                    for p in module.parameters(recurse=False):  # randomize its affine part too
                        p.normal_(0.0, 1.0)
            else:
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantMapWarning)
            maps = cls(work, names, **method_options)(x, fixed)
        steps.append(name)
        corrs.append(spearman(base, maps))
    correlations = torch.stack(corrs) if corrs else torch.zeros(0, x.shape[0])
    final = float(correlations[-1].mean()) if corrs else 1.0
    return SanityResult(steps, correlations, final, threshold)


def _name_of(model: nn.Module, module: nn.Module) -> str:
    from ..core.layers import module_name

    return module_name(model, module)
