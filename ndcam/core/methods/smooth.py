r"""Smoothed variants of Score-CAM and Grad-CAM++: SS-CAM, IS-CAM and Smooth Grad-CAM++ (any rank, seeded).

All three average a base method's ingredient over ``n_samples`` perturbations:

* **SS-CAM** (Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization", 2020,
  https://arxiv.org/abs/2006.14255): Gaussian noise on Score-CAM's masks,
  :math:`w_c = \mathrm{softmax}_c\big(\frac1n\sum_{i=1}^n f(X \circ (H_c + \delta_{i,c}))\big)`,
  :math:`\delta_{i,c} \sim \mathcal N(0, \sigma^2)` at the input's resolution;
* **IS-CAM** (Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations", 2020,
  https://arxiv.org/abs/2010.03023): Score-CAM's masked scores integrated along a path of mask scales,
  :math:`w_c = \mathrm{softmax}_c\big(\frac1n\sum_{i=1}^n f(X \circ t_i H_c)\big)` with :math:`t_i = i/n`
  (``path="linear"``, the Riemann sum of the integral from the baseline to the full mask). torch-cam's ``ISCAM``
  follows the paper's written sum, whose scales accumulate, :math:`t_i = \sum_{j\le i} j/n` (up to
  :math:`(n+1)/2`): ``path="cumulative"`` gives that;
* **Smooth Grad-CAM++** (Omeiza et al., "Smooth Grad-CAM++", 2019, https://arxiv.org/abs/1908.01224): Grad-CAM++
  with SmoothGrad noise on the input. With :math:`G^{(i)}` the gradients at the layer for the input plus noise
  :math:`\epsilon_i \sim \mathcal N(0, \sigma^2)` and :math:`D_p = \frac1n\sum_i (G^{(i)})^p`,

  .. math::
      \alpha_{c,s} = \frac{D_2}{2 D_2 + \big(\sum_{s'} A_{c,s'}\big) D_3 + \epsilon}, \qquad
      w_c = \sum_s \alpha_{c,s}\,\mathrm{ReLU}(D_1)_{c,s}

  with :math:`A` the activations of the clean input (Grad-CAM++'s eq. 19 with averaged derivatives, as ndcam's
  Grad-CAM++). torch-cam's ``SmoothGradCAMpp`` sums :math:`A\,D_3` over positions instead of multiplying
  :math:`\sum A` by :math:`D_3` (as MONAI's Grad-CAM++) and weights :math:`\alpha` by the gradient of the last noisy
  sample instead of :math:`D_1`.

Noise is drawn per call from ``seed=`` / ``generator=`` (:mod:`ndcam.methods._seeding`) and shared by the samples of
a batch, so a batch gives the maps of per-sample calls and K targets the maps of K calls.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from ..errors import InputError
from ._seeding import draw
from .base import BaseCAM, CallContext, register
from .gradient import GRADCAMPP_EPS
from .perturbation import LayerSite, _PerturbationCAM, scorecam_weights, unit_masks
from .random_cam import SeededMixin

__all__ = ["ISCAM_PATHS", "iscam_scales", "smoothgradcampp_weights", "SSCAM", "ISCAM", "SmoothGradCAMpp"]

ISCAM_PATHS = ("linear", "cumulative")


def iscam_scales(n: int, path: str = "linear") -> list[float]:
    """IS-CAM's mask scales :math:`t_1..t_n`: ``i/n`` (linear) or ``sum_{j<=i} j/n`` (cumulative)."""
    if path == "linear":
        return [i / n for i in range(1, n + 1)]
    if path == "cumulative":
        return [sum(j / n for j in range(1, i + 1)) for i in range(1, n + 1)]
    raise InputError(f"path must be one of {ISCAM_PATHS}, got {path!r}")


def smoothgradcampp_weights(activations: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor,
                            eps: float = GRADCAMPP_EPS) -> torch.Tensor:
    r"""Smooth Grad-CAM++ channel weights ``(N, C)`` from the clean activations and the averaged gradient powers
    :math:`D_1, D_2, D_3` (see the module docstring); :math:`\alpha = 0` where :math:`D_2 = 0`.
    """
    sum_a = ops.spatial_sum(activations)
    sum_a = ops.expand_like(sum_a, activations.ndim)
    den = 2 * d2 + sum_a * d3 + eps
    alpha = torch.where(d2 != 0, d2 / torch.where(den == 0, torch.ones_like(den), den), torch.zeros_like(d2))
    return ops.spatial_sum(alpha * torch.relu(d1))


def _check_samples(n_samples: object) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n_samples must be a positive int, got {n_samples!r}")
    return n_samples


def _check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0 or not math.isfinite(sigma):
        raise InputError(f"sigma must be a finite number >= 0, got {sigma!r}")
    return float(sigma)


class _MaskPathCAM(SeededMixin, _PerturbationCAM):
    """Score-CAM whose masked scores are averaged over ``n_samples`` transformed masks."""

    perturbative = True

    def __init__(self, model: nn.Module, layers=None, *, n_samples: int, batch_size: int = 64,
                 progress: bool | None = None, seed: int = 0, generator: torch.Generator | None = None,
                 **options) -> None:
        super().__init__(model, layers, batch_size=batch_size, progress=progress, **options)
        self.n_samples = _check_samples(n_samples)
        self._set_seed(seed, generator)

    def transform(self, masks: torch.Tensor, i: int, c0: int, channels: int, seed: int) -> torch.Tensor:
        """The ``i``-th transformed copy ``(b, n, *X)`` of the masks of channels ``c0..c0+b-1`` (a new tensor);
        ``seed`` is the call seed.
        """
        raise NotImplementedError

    def perturbed_scores(self, ctx: CallContext, site: LayerSite) -> torch.Tensor:
        """Target scores ``(N, C[, K])`` of ``x`` masked by each channel's transformed masks, averaged over the
        ``n_samples`` transformations (blocks of channels, fixed-batch fallback and progress: :meth:`_run_blocks`).
        """
        x, a = ctx.x, site.activation
        n, c = a.shape[:2]
        size = tuple(x.shape[2:])
        seed = self.call_seed_of(ctx)

        def block(c0: int, c1: int) -> torch.Tensor:
            b = c1 - c0
            acts = a[:, c0:c1].transpose(0, 1).reshape(b * n, *a.shape[2:])
            masks = unit_masks(acts, size).reshape(b, n, *size)
            per_sample = []
            for i in range(self.n_samples):
                m = self.transform(masks, i, c0, c, seed)
                batch = (m[:, :, None] * x[None]).reshape(b * n, *x.shape[1:])
                del m
                per_sample.append(self._scores_of(ctx, batch))
                del batch
            return torch.stack(per_sample).mean(0)

        return self._run_blocks(ctx, c, block)

    def weights_from(self, scores, base_scores):
        return scorecam_weights(scores)


@register("sscam", "ss-cam")
class SSCAM(_MaskPathCAM):
    """SS-CAM: Score-CAM with Gaussian noise on the masks (see the module docstring).

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        n_samples: noisy copies of every mask (default 35, as torch-cam).
        sigma: standard deviation of the noise added to the ``[0, 1]`` masks (default 2.0, as torch-cam).
        batch_size: masked inputs per forward pass.
        progress: progress bar on stderr (``None``: only for long runs).
        seed, generator: the noise (see :mod:`ndcam.methods._seeding`).

    Wang et al., "SS-CAM: Smoothed Score-CAM", 2020, https://arxiv.org/abs/2006.14255.
    """

    def __init__(self, model: nn.Module, layers=None, *, n_samples: int = 35, sigma: float = 2.0, **options) -> None:
        super().__init__(model, layers, n_samples=n_samples, **options)
        self.sigma = _check_sigma(sigma)

    def transform(self, masks, i, c0, channels, seed):
        b, size = masks.shape[0], masks.shape[2:]
        noise = torch.stack([draw("normal", tuple(size), seed, i, c0 + j, channels, 11, dtype=masks.dtype,
                                  device=masks.device) for j in range(b)])
        return masks + self.sigma * noise[:, None]


@register("iscam", "is-cam")
class ISCAM(_MaskPathCAM):
    """IS-CAM: Score-CAM's masked scores integrated over mask scales (see the module docstring).

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        n_samples: steps of the path (default 10, as torch-cam).
        path: ``"linear"`` (default: scales ``i/n``) or ``"cumulative"`` (torch-cam's scales).
        batch_size: masked inputs per forward pass.
        progress: progress bar on stderr (``None``: only for long runs).

    Naidu et al., "IS-CAM: Integrated Score-CAM", 2020, https://arxiv.org/abs/2010.03023.
    """

    def __init__(self, model: nn.Module, layers=None, *, n_samples: int = 10, path: str = "linear",
                 **options) -> None:
        super().__init__(model, layers, n_samples=n_samples, **options)
        self.scales = iscam_scales(self.n_samples, path)
        self.path = path

    def transform(self, masks, i, c0, channels, seed):
        return masks * self.scales[i]


@register("smoothgradcampp", "smoothgradcam++", "smooth-gradcam++")
class SmoothGradCAMpp(SeededMixin, BaseCAM):
    """Smooth Grad-CAM++: Grad-CAM++ with gradient powers averaged over noisy copies of the input (see the module
    docstring).

    Args:
        model: the model.
        layers: target layer(s) (default: automatic).
        n_samples: noisy copies of the input (default 4, as torch-cam).
        sigma: noise standard deviation, as a fraction of each sample's value range ``max - min`` (default 0.15,
            SmoothGrad's 10-20 %); with ``relative=False`` in the input's units (torch-cam: 0.3).
        relative: see ``sigma``.
        seed, generator: the noise (see :mod:`ndcam.methods._seeding`).

    Omeiza et al., "Smooth Grad-CAM++", 2019, https://arxiv.org/abs/1908.01224.
    """

    def __init__(self, model: nn.Module, layers=None, *, n_samples: int = 4, sigma: float = 0.15,
                 relative: bool = True, seed: int = 0, generator: torch.Generator | None = None, **options) -> None:
        super().__init__(model, layers, **options)
        self.n_samples = _check_samples(n_samples)
        self.sigma, self.relative = _check_sigma(sigma), bool(relative)
        self._set_seed(seed, generator)

    def _noise(self, x: torch.Tensor, i: int, base: int) -> torch.Tensor:
        e = draw("normal", tuple(x.shape[1:]), base, i, 13, dtype=x.dtype, device=x.device)[None]
        if not self.relative:
            return self.sigma * e
        flat = x.reshape(x.shape[0], -1)
        rng = ops.expand_like(flat.amax(1) - flat.amin(1), x)
        return self.sigma * rng * e

    def _layer_maps(self, ctx: CallContext) -> list[torch.Tensor]:
        cap, x, sc, score_fn = ctx.cap, ctx.x, ctx.scores, ctx.score_fn
        assert cap is not None and sc is not None, "_layer_maps runs inside the captured forward"
        acts = cap.activations
        n, k_total = sc.shape
        base = self.call_seed_of(ctx)
        # running sums of G, G^2, G^3 per layer and target, in float64
        sums = [[[torch.zeros_like(a, dtype=torch.float64) for _ in range(3)] for _ in range(k_total)] for a in acts]
        for i in range(self.n_samples):
            out = cap.forward(x + self._noise(x, i, base), ctx.inputs)
            s = self._check_scores(score_fn(out), n)
            s = s if s.ndim == 2 else s[:, None]
            for k in range(k_total):
                grads = cap.gradients(s[:, k], retain_graph=k < k_total - 1)
                for acc, g in zip(sums, grads):
                    g = g.double()
                    for p in range(3):
                        acc[k][p] += g ** (p + 1)
            del out, s
        per_layer = []
        for a, acc in zip(acts, sums):
            if a.dtype in (torch.float16, torch.bfloat16):
                a = a.float()
            maps = []
            for k in range(k_total):
                d1, d2, d3 = (t / self.n_samples for t in acc[k])
                w = smoothgradcampp_weights(a.double(), d1, d2, d3).to(a.dtype)
                if self.eigen_smooth:
                    m = ops.first_principal_component(ops.expand_like(w, a.ndim) * a)
                else:
                    m = ops.weighted_sum(w, a)
                maps.append(torch.relu(m))
            per_layer.append(torch.stack(maps, dim=1))
        return per_layer
