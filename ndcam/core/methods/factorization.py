r"""Factorizations of a layer's activations: kernel PCA (KPCA-CAM) and non-negative matrix factorization (Deep
Feature Factorization).

Both treat one sample's activations as a cloud of :math:`|S|` points (the spatial positions, of any rank) in
:math:`\mathbb{R}^C` (the channels) and factorize each sample on its own, so a batch gives the maps of per-sample
calls. Pure functions first, thin classes after.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch
from einops import rearrange
from torch import nn

from .. import ops
from ..errors import InputError, LayerError
from ._seeding import draw
from .base import BaseCAM, register

__all__ = [
    "KERNELS",
    "kernel_matrix",
    "kpca_map",
    "nmf",
    "nmf_init",
    "dff_factorize",
    "dff_map",
    "KPCACAM",
    "DeepFeatureFactorization",
]

KERNELS = ("rbf", "sigmoid", "poly", "linear", "cosine")


def _points(activations: torch.Tensor) -> torch.Tensor:
    """``(N, C, *S) -> (N, S, C)`` in float64, centred over the positions."""
    x = rearrange(activations, "n c ... -> n (...) c").double()
    return x - x.mean(dim=1, keepdim=True)


def kernel_matrix(x: torch.Tensor, kernel: str = "rbf", gamma: float | None = None, degree: int = 3,
                  coef0: float = 1.0) -> torch.Tensor:
    r"""Kernel matrices ``(N, S, S)`` of point clouds ``x`` ``(N, S, C)`` (scikit-learn's conventions):
    rbf :math:`e^{-\gamma\|x-y\|^2}`, sigmoid :math:`\tanh(\gamma x\cdot y + c_0)`, poly :math:`(\gamma x\cdot y +
    c_0)^d`, linear :math:`x\cdot y`, cosine :math:`x\cdot y/(\|x\|\|y\|)`; ``gamma`` defaults to :math:`1/C`.
    """
    g = 1.0 / x.shape[-1] if gamma is None else float(gamma)
    dot = x @ x.transpose(1, 2)
    if kernel == "rbf":
        sq = dot.diagonal(dim1=1, dim2=2)
        return torch.exp(-g * (sq[:, :, None] + sq[:, None, :] - 2 * dot).clamp(min=0))
    if kernel == "sigmoid":
        return torch.tanh(g * dot + coef0)
    if kernel == "poly":
        return (g * dot + coef0) ** degree
    if kernel == "linear":
        return dot
    if kernel == "cosine":
        norm = x.norm(dim=-1).clamp(min=1e-300)
        return dot / (norm[:, :, None] * norm[:, None, :])
    raise InputError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def kpca_map(activations: torch.Tensor, kernel: str = "rbf", gamma: float | None = None, degree: int = 3,
             coef0: float = 1.0) -> torch.Tensor:
    r"""KPCA-CAM map ``(N, *S)``: every position's coordinate on the first kernel principal component.

    Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision Models using Kernel PCA", MMSP 2024,
    https://arxiv.org/abs/2410.00267. With :math:`K` the kernel matrix of the positions' channel vectors (centred
    over the positions) and :math:`\tilde K = K - \mathbf{1}K - K\mathbf{1} + \mathbf{1}K\mathbf{1}` its centred
    version (:math:`\mathbf{1}` the matrix of :math:`1/|S|`), the map is :math:`\sqrt{\lambda_1}\, v_1` for the
    leading eigenpair of :math:`\tilde K` (scikit-learn's ``KernelPCA.fit_transform``). The sign of an eigenvector
    is arbitrary; it is fixed so the map correlates positively with the channel sum of the activations.
    """
    n, spatial = activations.shape[0], activations.shape[2:]
    k = kernel_matrix(_points(activations), kernel, gamma, degree, coef0)
    kc = k - k.mean(1, keepdim=True) - k.mean(2, keepdim=True) + k.mean((1, 2), keepdim=True)
    vals, vecs = torch.linalg.eigh(kc)
    proj = vecs[:, :, -1] * vals[:, -1].clamp(min=0).sqrt()[:, None]
    ref = ops.channel_sum(activations).reshape(n, -1).double()
    ref = ref - ref.mean(1, keepdim=True)
    sign = torch.where((proj * ref).sum(1) < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign[:, None]).reshape(n, *spatial).to(activations.dtype)


def nmf_init(c: int, s: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded non-negative starting factors ``W0`` ``(C, k)`` and ``H0`` ``(k, S)`` in ``[0, 1)`` (float64),
    scaled per sample by :func:`nmf`.
    """
    return draw("uniform", (c, k), seed, c, s, k, 1), draw("uniform", (k, s), seed, c, s, k, 2)


def nmf(v: torch.Tensor, k: int, iterations: int = 200, init: tuple[torch.Tensor, torch.Tensor] | None = None,
        eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Non-negative matrix factorization :math:`V \approx W H` of a batch ``v`` ``(N, C, S)`` (non-negative) with
    ``k`` components, by Lee & Seung's multiplicative updates for the Frobenius loss (a fixed number of iterations:
    deterministic, and the same for a sample alone or in a batch):

    .. math::
        H \leftarrow H \circ \frac{W^\top V}{W^\top W H + \epsilon}, \qquad
        W \leftarrow W \circ \frac{V H^\top}{W H H^\top + \epsilon}

    Starting factors: ``init`` (default :func:`nmf_init` with seed 0) scaled by :math:`\sqrt{\bar V / k}` per sample
    (scikit-learn's random initialization scale). Returns ``W`` ``(N, C, k)`` and ``H`` ``(N, k, S)`` in float64.
    """
    v = v.double()
    n, c, s = v.shape
    w0, h0 = nmf_init(c, s, k) if init is None else init
    scale = (v.mean((1, 2)) / k).sqrt().clamp(min=eps)[:, None, None]
    w = (w0.to(v)[None] * scale).contiguous()
    h = (h0.to(v)[None] * scale).contiguous()
    for _ in range(iterations):
        wt = w.transpose(1, 2)
        h = h * (wt @ v) / (wt @ w @ h + eps)
        ht = h.transpose(1, 2)
        w = w * (v @ ht) / (w @ (h @ ht) + eps)
    return w, h


def dff_factorize(activations: torch.Tensor, k: int, iterations: int = 200, seed: int = 0):
    r"""Deep Feature Factorization of each sample: ``(W, H, offset)`` with :math:`A_{c,s} \approx \sum_j W_{c,j}
    H_{j,s} + o_c` for ``activations`` ``(N, C, *S)``; ``W`` ``(N, C, k)`` (concept vectors), ``H`` ``(N, k, *S)``
    (concept maps), ``o`` ``(N, C)`` the per-channel minimum subtracted to make the activations non-negative.

    Collins, Achanta & Süsstrunk, "Deep Feature Factorization for Concept Discovery", ECCV 2018,
    https://arxiv.org/abs/1806.10206. Components are ordered by decreasing energy
    :math:`\|W_{:,j}\|\,\|H_{j,:}\|`.
    """
    n, c = activations.shape[:2]
    spatial = activations.shape[2:]
    v = activations.reshape(n, c, -1).double()
    offset = v.amin(-1)
    w, h = nmf(v - offset[..., None], k, iterations, nmf_init(c, v.shape[-1], k, seed))
    energy = w.norm(dim=1) * h.norm(dim=2)  # (N, k)
    order = energy.argsort(dim=1, descending=True, stable=True)
    w = w.gather(2, order[:, None, :].expand_as(w))
    h = h.gather(1, order[:, :, None].expand_as(h))
    return w, h.reshape(n, k, *spatial), offset


def dff_map(concepts: torch.Tensor, concept_maps: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    r"""Target map of Deep Feature Factorization: Grad-CAM in concept space.

    With :math:`A \approx W H + o`, the gradient of the score with respect to the concept maps is
    :math:`\partial y / \partial H_{j,s} = \sum_c W_{c,j} G_{c,s}`, so the concept weights and the map are

    .. math::
        w_j = \frac{1}{|S|} \sum_s \sum_c W_{c,j} G_{c,s}, \qquad M_s = \sum_j w_j H_{j,s}

    Args:
        concepts: ``W`` ``(N, C, k)``.
        concept_maps: ``H`` ``(N, k, *S)``.
        gradients: ``G`` ``(N, C, *S)``.
    """
    wj = torch.einsum("nck,nc->nk", concepts, ops.spatial_mean(gradients.double()))
    return ops.weighted_sum(wj, concept_maps).to(gradients.dtype)


def _check_int(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@register("kpcacam", "kpca-cam")
class KPCACAM(BaseCAM):
    """KPCA-CAM: first kernel principal component of the activations (class-agnostic, no gradients; see
    :func:`kpca_map`).

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        kernel: one of :data:`KERNELS` (default ``"rbf"``, the kernel the paper recommends; pytorch-grad-cam's
            ``KPCA_CAM`` defaults to ``"sigmoid"`` and leaves the component's sign to the solver).
        gamma: kernel coefficient (default ``1 / channels``, as scikit-learn).
        degree, coef0: for the polynomial and sigmoid kernels.
        max_positions: refuse layers with more spatial positions than this (the kernel matrix is positions^2).

    Karmani et al., "KPCA-CAM", 2024, https://arxiv.org/abs/2410.00267.
    """

    uses_gradients = False
    unsupported = MappingProxyType({"eigen_smooth": "KPCA-CAM's map is a (kernel) principal component already"})

    def __init__(self, model: nn.Module, layers=None, *, kernel: str = "rbf", gamma: float | None = None,
                 degree: int = 3, coef0: float = 1.0, max_positions: int = 4096, **options) -> None:
        super().__init__(model, layers, **options)
        if kernel not in KERNELS:
            raise InputError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0):
            raise InputError(f"gamma must be None or a positive number, got {gamma!r}")
        self.kernel, self.gamma, self.degree, self.coef0 = kernel, gamma, _check_int("degree", degree), float(coef0)
        self.max_positions = _check_int("max_positions", max_positions)

    def layer_map(self, activations, gradients, classes):
        positions = math.prod(activations.shape[2:])
        if positions > self.max_positions:
            raise LayerError(
                f"KPCA-CAM: the layer has {positions} spatial positions; its kernel matrix would be {positions}^2 per "
                f"sample (limit max_positions={self.max_positions}); choose a coarser layer or raise max_positions"
            )
        return kpca_map(activations, self.kernel, self.gamma, self.degree, self.coef0)



@register("dff", "deepfeaturefactorization", "deep-feature-factorization")
class DeepFeatureFactorization(BaseCAM):
    r"""Deep Feature Factorization: NMF of the layer's activations into ``n_concepts`` concepts.

    Collins et al., ECCV 2018, https://arxiv.org/abs/1806.10206 (see :func:`dff_factorize`). Two outputs:

    * :meth:`concepts` gives what the paper shows: the ``k`` concept maps ``(N, k, *spatial)`` of each sample
      (upsampled, min-max normalized, strongest concept first) with the concept vectors ``(N, C, k)``;
    * as a CAM method (``ndcam.explain(method="dff")``, targets as usual) the map of a target is Grad-CAM in concept
      space (:func:`dff_map`): each concept map weighted by the mean gradient of the score along its concept vector,
      then ReLU -- so the ``(N[, K], *spatial)`` output keeps its meaning (one map per target).

    Unlike pytorch-grad-cam, which factorizes the whole batch at once (the concepts, and so each sample's maps,
    depend on the other samples) with scikit-learn's NMF, every sample is factorized alone with a fixed number of
    seeded multiplicative updates (:func:`nmf`).

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        n_concepts: number of concepts ``k`` (default 4; at most the layer's channels and positions).
        iterations: NMF updates (default 200).
        seed: seed of the NMF starting point.
    """

    def __init__(self, model: nn.Module, layers=None, *, n_concepts: int = 4, iterations: int = 200, seed: int = 0,
                 **options) -> None:
        super().__init__(model, layers, **options)
        self.n_concepts = _check_int("n_concepts", n_concepts)
        self.iterations = _check_int("iterations", iterations)
        self.seed = _check_int("seed", seed, 0)

    def _factorize(self, activations: torch.Tensor):
        k = min(self.n_concepts, activations.shape[1], math.prod(activations.shape[2:]))
        return dff_factorize(activations, k, self.iterations, self.seed)

    def layer_map(self, activations, gradients, classes):
        w, h, _ = self._factorize(activations)
        return dff_map(w, h, gradients)

    def channel_maps(self, activations, gradients, classes):
        w, h, _ = self._factorize(activations)
        wj = torch.einsum("nck,nc->nk", w, ops.spatial_mean(gradients.double()))
        return (ops.expand_like(wj, h.ndim) * h).to(activations.dtype)

    def concepts(self, x: torch.Tensor, *, upsample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Concept maps ``(N, k, *spatial)`` (min-max normalized; at the input's size with ``upsample``) and concept
        vectors ``(N, C, k)`` of the first target layer (strongest concept first). No gradients are computed.
        """
        from ..capture import Capture, ModelState, model_lock
        from .base import _check_device, _check_finite, _check_input

        _check_input(x)
        _check_device(self.model, x)
        _check_finite(x)
        layers = self._layers if self._layers is not None else self._default_layers(x)
        with model_lock(self.model):
            state = ModelState.save(self.model)
            try:
                with torch.inference_mode(False), Capture(self.model, layers[:1], x.ndim - 2, grads=False,
                                                            reshape=self.reshape) as cap:
                    cap.forward(x.detach())
                    a = cap.activations[0]
                    cap.clear()
            finally:
                state.restore()
        w, h, _ = self._factorize(a)
        n, k = h.shape[:2]
        if upsample:
            h = ops.upsample(h.reshape(n * k, *h.shape[2:]), tuple(x.shape[2:])).reshape(n, k, *x.shape[2:])
        return ops.minmax_normalize(h.float(), batch_dims=2), w.float()
