r"""Activation-based maps: CAM (classifier weights) and the Eigen family (principal components).

Pure functions first (tensors in, tensors out, any spatial rank), thin classes after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .. import ops
from ..capture import this_thread
from ..errors import InputError, LayerError
from ..layers import resolve_layers
from .base import BaseCAM, register

__all__ = ["cam_weights", "eigencam_map", "eigengradcam_map", "CAM", "EigenCAM", "EigenGradCAM"]


def cam_weights(fc_weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    r"""CAM channel weights :math:`w_c = W_{k,c}`: the rows of the classifier after global average pooling.

    For a single-logit binary head (``fc_weight`` of shape ``(1, C)``) class 1 is the row and class 0 its negation.

    Args:
        fc_weight: ``(classes, C)`` classifier weight.
        classes: ``(N,)`` class index per sample.
    """
    if fc_weight.shape[0] == 1:
        return fc_weight[0][None, :] * (classes.to(fc_weight.dtype) * 2 - 1)[:, None]
    return fc_weight[classes]


def eigencam_map(activations: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM map: projection of the (position-centred) activations on their first principal component.

    Muhammad & Yeasin, "Eigen-CAM", IJCNN 2020, https://arxiv.org/abs/2008.00299. The sign is fixed so the map
    correlates positively with the channel sum of the activations; pytorch-grad-cam leaves the sign to the SVD solver,
    which can invert the map.
    """
    return ops.first_principal_component(activations)


def eigengradcam_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Eigen-Grad-CAM map: first principal component of gradient x activation (class-discriminative Eigen-CAM).

    The sign is fixed so the map correlates positively with the HiResCAM map ``sum_c G*A``.
    """
    ga = gradients * activations
    return ops.first_principal_component(ga, reference=ops.channel_sum(ga))


@register("cam")
class CAM(BaseCAM):
    r"""Class Activation Mapping: :math:`M = \sum_c W_{k,c} A_c` for a network that ends in global average pooling and
    one linear classifier :math:`W`.

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, https://arxiv.org/abs/1512.04150.
    As in the paper, no ReLU is applied (the raw map can be negative). For such a network Grad-CAM's weights are
    :math:`W_{k,c}/|S|`, so Grad-CAM equals CAM up to the ReLU.

    The formula holds only if the layer's spatial mean is exactly what the classifier receives and the classifier's
    output is the model's output, so both are checked on every call (numerically, on the forward pass that is
    explained): the classifier's input must equal the global average of the layer's activation (or, for a kernel-1
    convolution applied before pooling, the activation itself), and its output must be the model's output (or the
    logits a final softmax/log-softmax/sigmoid turns into it). Otherwise CAM refuses with a :class:`~ndcam.LayerError`:
    a hidden ``Linear`` (MobileNetV3's ``Linear(576, 1024)``) has no class rows, and features read before an operation
    that runs ahead of the pooling (DenseNet's ``F.relu`` after ``features``) are not what the classifier averages.
    Grad-CAM has neither restriction.

    Args:
        model: the model.
        layers: the layer before global pooling (default: automatic).
        fc: the classifier (dotted name or module); default: the ``nn.Linear`` (or kernel-1 convolution) that
            receives the layer's global average and gives the model's output. A given ``fc`` is checked only for its
            input (its output may be rescaled, e.g. by a temperature, before the model returns it).
    """

    uses_gradients = False
    relu = False
    callable_targets = False  # class rows need class indices; for custom scores GradCAM equals CAM on such heads

    def __init__(self, model: nn.Module, layers=None, *, fc: str | nn.Module | None = None, **options) -> None:
        super().__init__(model, layers, **options)
        self._fc = None if fc is None else resolve_layers(model, fc)[0][1]
        if self._fc is not None and not self._is_classifier(self._fc):
            raise LayerError(f"fc must be an nn.Linear or a kernel-1 convolution, got {type(self._fc).__name__}")

    @staticmethod
    def _is_classifier(m: nn.Module) -> bool:
        if isinstance(m, nn.Linear):
            return True
        return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups == 1 and all(k == 1 for k in m.kernel_size)

    @contextlib.contextmanager
    def _forward_context(self, ctx) -> Iterator[None]:
        """Record the input and output of the candidate classifiers on the explained forward (into ``ctx.state``;
        the check in :meth:`_layer_maps` reads them with ``ctx.output``). Only a candidate whose input has a captured
        layer's channel count is kept, so no other module's tensors stay alive.
        """
        seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        ctx.state["cam_seen"] = seen

        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            if module in seen or not inputs or not isinstance(inputs[0], torch.Tensor) \
                    or not isinstance(output, torch.Tensor) or ctx.cap is None:
                return
            channels = {a.shape[1] for a in ctx.cap.activations}
            if inputs[0].ndim >= 2 and inputs[0].shape[1] in channels:
                seen[module] = (inputs[0].detach(), output.detach())

        candidates = [self._fc] if self._fc is not None else [m for m in self.model.modules() if self._is_classifier(m)]
        handles = [m.register_forward_hook(this_thread(record)) for m in candidates]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _layer_maps(self, ctx) -> list[torch.Tensor]:
        """``M = sum_c W[k, c] A_c`` per captured layer call and target, with the classifier checked first."""
        cap, class_idx, sc = ctx.cap, ctx.class_idx, ctx.scores
        if class_idx is None:
            raise InputError("CAM needs class indices")
        out = []
        for a in cap.activations:
            a = ops.wide(a)
            w = self._fc_weight(a, ctx.state.get("cam_seen") or {}, ctx.output).detach().to(a.dtype)
            maps = []
            for k in range(sc.shape[1]):
                classes = class_idx[:, k] if class_idx.ndim == 2 else class_idx
                if w.shape[0] > 1 and int(classes.max()) >= w.shape[0]:
                    raise InputError(
                        f"CAM: class {int(classes.max())} out of range for a classifier with {w.shape[0]} classes")
                wk = cam_weights(w, classes)
                if self.eigen_smooth:
                    maps.append(ops.first_principal_component(ops.expand_like(wk, a.ndim) * a))
                else:
                    maps.append(ops.weighted_sum(wk, a))
            out.append(torch.stack(maps, dim=1))
        return out

    @staticmethod
    def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
        """Equal up to roundings (relative 1e-2 of the larger magnitude; 1e-7 when both are float64).

        The check is about structure -- a ReLU, a hidden layer or a token read between the layer and the classifier
        changes the values at order one -- so the tolerance also covers models that compute or round in float16.
        """
        if a.shape != b.shape:
            return False
        rtol = 1e-7 if a.dtype == b.dtype == torch.float64 else 1e-2
        a, b = a.double(), b.double()
        scale = float(b.abs().max()) if b.numel() else 0.0
        return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * max(scale, 1e-12)))

    def _is_model_output(self, out: torch.Tensor, n: int, outputs: list[torch.Tensor], *, pooled: bool) -> bool:
        """Whether a classifier's output (pooled over space first if ``pooled``) is the model's output or its logits."""
        logits = out.flatten(2).mean(2) if pooled and out.ndim > 2 else out
        logits = logits.reshape(n, -1).double()
        forms = [logits, torch.softmax(logits, 1), torch.log_softmax(logits, 1), torch.sigmoid(logits)]
        return any(self._close(f, t.reshape(n, -1)) for t in outputs if t.numel() == logits.numel()
                   for f in forms)

    def _fc_weight(self, activations: torch.Tensor, seen: dict, output: object) -> torch.Tensor:
        """The verified classifier's weight ``(classes, C)`` for one captured activation ``(N, C, *S)``; ``seen``
        holds the candidates :meth:`_forward_context` recorded on the explained forward, ``output`` its output.
        """
        from ..capture import tree_map
        from ..layers import module_name

        n, channels = activations.shape[:2]
        mean = activations.flatten(2).mean(2)
        size = {m: (m.in_features if isinstance(m, nn.Linear) else m.in_channels) for m in seen}
        ran = [m for m in seen if size[m] == channels]
        label = ", ".join(f"{module_name(self.model, m)!r} ({type(m).__name__} {size[m]}->"
                          f"{m.out_features if isinstance(m, nn.Linear) else m.out_channels})" for m in seen)
        if not ran:
            raise LayerError(
                f"CAM: no nn.Linear (or kernel-1 convolution) with {channels} input features -- the target layer's "
                f"channels -- ran in the forward pass"
                + (f" (the given fc is {label})" if self._fc is not None else (f" (those that ran: {label})" if label else ""))
                + "; CAM needs the layer to feed global average pooling and one linear classifier -- pass the layer "
                "before the pooling, fc=..., or use GradCAM"
            )
        fed = []
        for m in ran:
            inp, out = seen[m]
            if inp.numel() == mean.numel() and self._close(inp.reshape(n, channels), mean):
                fed.append((m, out, False))
            elif inp.shape == activations.shape and self._close(inp, activations):
                fed.append((m, out, True))  # kernel-1 conv applied to the map, pooled afterwards
        if not fed:
            raise LayerError(
                f"CAM: the classifier candidate(s) {', '.join(repr(module_name(self.model, m)) for m in ran)} do not "
                f"receive the global average of the target layer's activation: something other than global average "
                f"pooling runs between the layer and the classifier (e.g. DenseNet's F.relu after 'features', a head "
                f"that reads a class token, or a layer that is not the last before pooling), so its classifier rows "
                f"would weight the wrong activations; choose the module whose "
                f"spatial mean the classifier receives, or use GradCAM (it reads gradients through whatever runs in "
                f"between)"
            )
        if self._fc is not None:
            m = fed[0][0]
        else:
            outputs: list[torch.Tensor] = []

            def collect(t: torch.Tensor) -> torch.Tensor:  # every tensor of the model's output
                outputs.append(t.detach())
                return t

            tree_map(collect, output)
            final = [(m, out, pooled) for m, out, pooled in fed
                     if self._is_model_output(out, n, outputs, pooled=pooled)]
            if not final:
                m = fed[0][0]
                raise LayerError(
                    f"CAM: {module_name(self.model, m)!r} ({type(m).__name__}) receives the global average of the "
                    f"target layer, but its output is not the model's output: more layers follow it (a hidden layer, "
                    f"as in MobileNetV3's Linear -> Hardswish -> Dropout -> Linear classifier), so its rows are not "
                    f"class weights; CAM needs global pooling followed by ONE linear classifier -- use GradCAM, or pass "
                    f"fc= if the model only rescales that layer's output"
                )
            m = final[0][0]
        w = m.weight
        assert isinstance(w, torch.Tensor)
        return w if isinstance(m, nn.Linear) else w.reshape(w.shape[0], channels)



@register("eigencam", "eigen-cam")
class EigenCAM(BaseCAM):
    """Eigen-CAM: first principal component of the activations (class-agnostic, no gradients; see
    :func:`eigencam_map`).

    Muhammad & Yeasin, "Eigen-CAM", IJCNN 2020, https://arxiv.org/abs/2008.00299.
    """

    uses_gradients = False

    def layer_map(self, activations, gradients, classes):
        return eigencam_map(activations)

    def channel_maps(self, activations, gradients, classes):
        return activations  # its principal component is the Eigen-CAM map already


@register("eigengradcam", "eigen-grad-cam")
class EigenGradCAM(BaseCAM):
    """Eigen-Grad-CAM: first principal component of gradient x activation (see :func:`eigengradcam_map`).

    The class-discriminative variant of Eigen-CAM (Muhammad & Yeasin 2020, https://arxiv.org/abs/2008.00299).
    """

    def layer_map(self, activations, gradients, classes):
        return eigengradcam_map(activations, gradients)

    def channel_maps(self, activations, gradients, classes):
        return gradients * activations
