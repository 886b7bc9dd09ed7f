r"""Finer-CAM: Grad-CAM of the target's score against its most similar classes.

Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual Explanation", CVPR 2025,
https://arxiv.org/abs/2501.11309. For a target class :math:`t` with logit :math:`z_t`, the comparison classes
:math:`\mathcal{J}` are the ``n_similar`` classes :math:`j \ne t` whose logits are closest to :math:`z_t`
(:math:`|z_j - z_t|` smallest, on the unperturbed output), and the explained score is their softmax-weighted
difference with comparison strength :math:`\alpha`:

.. math::
    y = \frac{\sum_{j\in\mathcal{J}} p_j\,(z_t - \alpha z_j)}{\sum_{j\in\mathcal{J}} p_j + 10^{-9}}, \qquad
    p = \mathrm{softmax}(z)

(the form of pytorch-grad-cam's ``FinerWeightedTarget``; the weights :math:`p_j` are differentiated too). The map is
Grad-CAM's for that score: :math:`\mathrm{ReLU}(\sum_c \overline{\partial y/\partial A_c}\, A_c)`. With
:math:`\alpha = 0` it is Grad-CAM of the logit; :math:`\alpha = 1` keeps only what separates :math:`t` from its
look-alikes. torch-cam's ``FinerCAM`` uses the plain mean instead, :math:`z_t - \alpha \bar z_{\mathcal J}`
(``weighting="mean"``; its default strength is 0.6). pytorch-grad-cam takes the comparison classes as ranks
(``comparison_categories=[1, 2, 3]``) of the same sorting; ``n_similar=3`` is the same choice.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ._class_scores import ClassScore, ClassScoreMixin
from .base import BaseCAM, register
from .gradient import gradcam_weights

__all__ = ["similar_classes", "finer_scores", "FinerCAM"]

#: comparison classes when ``n_similar`` is not given (pytorch-grad-cam's ``comparison_categories=[1, 2, 3]``)
DEFAULT_SIMILAR = 3


def similar_classes(logits: torch.Tensor, classes: torch.Tensor, n_similar: int) -> torch.Tensor:
    """The ``n_similar`` classes ``(N, K, n_similar)`` whose logits are closest to each target's (target excluded;
    ties broken by the lower class index).
    """
    m = logits.shape[1]
    if n_similar > m - 1:
        raise InputError(f"Finer-CAM: n_similar={n_similar} comparison classes asked for, but the model has only "
                         f"{m} classes ({m - 1} besides the target); lower n_similar")
    zt = logits.gather(1, classes)  # (N, K)
    dist = (logits[:, None, :] - zt[:, :, None]).abs()  # (N, K, M)
    dist = dist.scatter(2, classes[:, :, None], float("inf"))
    return dist.argsort(dim=2, stable=True)[:, :, :n_similar]


def finer_scores(logits: torch.Tensor, classes: torch.Tensor, comparison: torch.Tensor, alpha: float = 1.0,
                 eps: float = 1e-9, weighting: str = "softmax") -> torch.Tensor:
    r"""Finer-CAM scores ``(N, K)`` over the comparison classes ``(N, K, J)``: with ``weighting="softmax"``
    :math:`\sum_j p_j (z_t - \alpha z_j) / (\sum_j p_j + \epsilon)`; with ``"mean"``
    :math:`z_t - \alpha\,\frac1J\sum_j z_j` (torch-cam's ``FinerCAM``).
    """
    n, k, j = comparison.shape
    flat = comparison.reshape(n, k * j)
    zj = logits.gather(1, flat).reshape(n, k, j)
    zt = logits.gather(1, classes)
    if weighting == "mean":
        return zt - alpha * zj.mean(2)
    pj = torch.softmax(logits, dim=1).gather(1, flat).reshape(n, k, j)
    return (pj * (zt[:, :, None] - alpha * zj)).sum(2) / (pj.sum(2) + eps)


@register("finercam", "finer-cam")
class FinerCAM(ClassScoreMixin, BaseCAM):
    """Finer-CAM (see the module docstring): Grad-CAM of the target against its ``n_similar`` closest classes.

    Args:
        model: a classifier with at least ``n_similar + 1`` classes.
        layers: target layer(s) (default: automatic).
        alpha: comparison strength (default 1).
        n_similar: number of comparison classes (default ``None``: 3, or all other classes when the model has fewer
            than 4; an explicit number larger than the other classes is an error).

        weighting: ``"softmax"`` (default, pytorch-grad-cam's form) or ``"mean"`` (torch-cam's form).

    A single-logit binary head :math:`z` is read as the two class logits :math:`(-z, z)` (ndcam's signed-logit
    convention for classes 0 and 1), so Finer-CAM compares the two sides.

    Zhang et al., "Finer-CAM", 2025, https://arxiv.org/abs/2501.11309.
    """

    def __init__(self, model: nn.Module, layers=None, *, alpha: float = 1.0, n_similar: int | None = None,
                 weighting: str = "softmax", **options) -> None:
        super().__init__(model, layers, **options)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise InputError(f"alpha must be a number (comparison strength), got {alpha!r}")
        if n_similar is not None and (isinstance(n_similar, bool) or not isinstance(n_similar, int) or n_similar < 1):
            raise InputError(f"n_similar must be None or a positive int, got {n_similar!r}")
        if weighting not in ("softmax", "mean"):
            raise InputError(f"weighting must be 'softmax' or 'mean', got {weighting!r}")
        self.alpha, self.n_similar, self.weighting = float(alpha), n_similar, weighting

    #: Finer-CAM builds its score from the target class and its similar classes: class indices only
    callable_targets = False

    def class_score(self, targets, n, device):
        def two_sided(z):
            return torch.cat([-z, z], dim=1) if z.shape[1] == 1 else z

        def prepare(logits, idx):
            z = two_sided(logits)
            j = min(DEFAULT_SIMILAR, z.shape[1] - 1) if self.n_similar is None else self.n_similar
            return similar_classes(z, idx, j)

        def score(z, idx, comp):
            # in float64 (or wider): with float32 logits ~1e35 the softmax weights' gradient (z_t - z_j) / eps
            # overflows float32 and meets a zero softmax derivative (inf * 0 = NaN)
            wide = two_sided(z).to(torch.promote_types(z.dtype, torch.float64))
            return finer_scores(wide, idx, comp, self.alpha, weighting=self.weighting).to(z.dtype)

        return ClassScore(targets, n, device, score, "targets", prepare)

    def weights(self, activations, gradients, classes):
        return gradcam_weights(gradients)
