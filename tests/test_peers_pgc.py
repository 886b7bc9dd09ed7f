r"""Agreement with pytorch-grad-cam (PyPI ``grad-cam`` 1.5.7, ``import pytorch_grad_cam``), skipped when it is absent.

pytorch-grad-cam is not a dependency. It imports OpenCV, scikit-learn and ttach (real packages, needed) and torchvision
(replaced here by a stand-in, see :func:`_torchvision_stand_in`). ``bash dev.sh`` installs them into the test venv
with ``--no-deps`` (so CI runs these oracles). Elsewhere, install them into a folder of
their own -- ``--no-deps`` so that torch is never touched -- and point ``NDCAM_PEERS`` at it (``os.pathsep``-separated
folders, e.g. together with torch-cam's for tests/test_peers_new.py)::

    pip install --no-deps --target /tmp/peers/pgc grad-cam==1.5.7 opencv-python-headless scikit-learn ttach \
        threadpoolctl joblib cloudpickle narwhals
    NDCAM_PEERS=/tmp/peers/pgc pytest tests/test_peers_pgc.py

**How the maps are compared.** pytorch-grad-cam's ``BaseCAM`` returns, for every map,
``minmax(relu(resize(minmax(relu(cam)))))`` (``compute_cam_per_layer`` clips, normalizes and resizes with
``scale_cam_image``; ``aggregate_multi_layers`` clips and normalizes again). ndcam's default output is
``minmax(upsample(relu(cam)))``. The resizing:

* 2D: ``cv2.resize`` (``INTER_LINEAR``, half-pixel centres) is ndcam's bilinear ``align_corners=False`` upsampling.
  Linear interpolation commutes with the inner min-max (a positive affine map, whose ``1e-7`` guard only scales)
  and keeps maps non-negative, so both outputs are the same expression and are compared directly, at the stride-2
  layer ``feat``.
* 1D: pytorch-grad-cam accepts only 4-D and 5-D tensors; :class:`_Lift1d` shows it the 1D net as a 2D net of height
  1 (``cv2.resize`` of a ``(1, L')`` map is then 1D linear interpolation, ndcam's).
* 3D: ``scipy.ndimage.zoom`` with its default cubic spline (order 3, corner-aligned grid), not trilinear. At a layer
  of the input's resolution (``act1``) the zoom factor is 1, both resizings are the identity and the default outputs
  are compared. At ``feat`` the zoom pads with zeros (``mode="constant"``), so it does not commute with the shift of
  the inner min-max, and its spline undershoots below 0 (clipped by the outer ReLU): the asserted relation is
  ``theirs == minmax(relu(zoom(m - min m)))``, ``m`` being ndcam's layer-resolution map (``upsample=False,
  normalize=False``).

Agreement (float64 nets; pytorch-grad-cam returns float32, so ``atol`` is a few float32 roundings of a [0, 1] map):
Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, Grad-CAM element-wise, LayerCAM, FEM (ndcam's
``variant="pytorch-grad-cam"``), ShapleyCAM (logit and ReST targets), Finer-CAM and RandomCAM (fed the same weights)
on 1D, 2D and 3D at ``atol=2e-6`` (measured <= 5e-7); Ablation-CAM (``atol=2e-5``: their scores are float32, measured
4e-6) and Score-CAM on 1D and 2D (their code is 2D-only:
``tensor.repeat(n, 1, 1, 1)``, ``UpsamplingBilinear2d``); KPCA-CAM and Eigen-CAM / Eigen-Grad-CAM on every rank
after the sign conventions below; Deep Feature Factorization on 1D and 2D (their ``dff`` unpacks 4-D activations)
on activations with a unique factorization.

Documented differences, each asserted as a relation:

* **Score-CAM**: pytorch-grad-cam upsamples the masks with ``UpsamplingBilinear2d`` (``align_corners=True``); the
  Score-CAM paper and ndcam use the same upsampling as for the maps (``align_corners=False``). With their upsampler
  replaced by ``align_corners=False`` the maps agree at ``atol=2e-6``; unpatched they differ at ``feat`` (measured
  4e-4 in 2D, 7e-3 in 1D) and not at ``act1``, where both upsamplings are the identity.
* **Eigen-CAM, Eigen-Grad-CAM**: the sign of the principal component is left to LAPACK's SVD (after the ReLU, the
  other sign is a different map, not an inverted one); ndcam fixes it (positive correlation with the channel sum,
  resp. the HiResCAM map). Asserted: theirs equals ndcam's construction with one of the two signs.
* **KPCA-CAM**: the same kernel PCA (scikit-learn's ``KernelPCA`` centres the kernel matrix; ndcam too), but
  scikit-learn's ``svd_flip`` makes the eigenvector's largest-magnitude entry positive while ndcam orients the
  component along the channel sum; pytorch-grad-cam's default kernel is ``"sigmoid"``, ndcam's ``"rbf"`` (the paper's
  recommendation). Asserted: theirs equals ndcam's projection flipped to scikit-learn's sign, for both kernels.
* **FEM**: pytorch-grad-cam's FEM is :math:`\sum_c \overline{B_c} A_c` (fraction of above-threshold positions
  times the activations, strict ``>``); the FEM papers (and ndcam's default) weight the binary masks by the channel
  means, :math:`\sum_c \mu_c B_c`. ndcam's ``variant="pytorch-grad-cam"`` agrees; the default does not.
* **ShapleyCAM / ReST**: pytorch-grad-cam's ``ClassifierOutputReST`` is per sample in 1.5.7 (``reduction='none'``,
  and ``BaseCAM`` scores every sample's 1-D output on its own), as ndcam's ReST: a batch gives the per-sample maps.
* **Finer-CAM**: one ``target_idx`` for the whole batch there (or the top class); ``comparison_categories=[1, 2, 3]``
  (ranks in the sorted distance list, rank 0 being the target) is ndcam's ``n_similar=3``.
* **RandomCAM**: pytorch-grad-cam draws fresh weights for every sample and call from numpy's global RNG; ndcam draws
  one seeded vector per call, shared by the batch. Compared by feeding both the same ``(N, C)`` weights.
* **Deep Feature Factorization**: pytorch-grad-cam factorizes the whole batch at once with scikit-learn's NMF
  (coordinate descent, ``init="random"``, ``random_state=0``) and returns the concept maps; ndcam factorizes every
  sample alone with seeded multiplicative updates (200 by default, which converge more slowly) and orders concepts
  by energy. NMF is not unique in general, so the two are compared on planted activations whose factorization is
  unique (every concept owns a channel and every position belongs to one concept): both recover the planted concept
  maps (theirs to ~5e-5, ndcam's to ~4e-3 at the default 200 iterations) and agree up to the order of the concepts
  (to ~4e-3; below 1e-3 with 3000 iterations). ndcam's target maps (Grad-CAM in concept space) have no counterpart.

Not compared: FullGrad (theirs post-processes differently from the authors' code, which ndcam follows), and
pytorch-grad-cam's methods ndcam does not define (SegEigenCAM, RefineCAM, SESS, ablation of several layers).
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import ndcam
from ndcam.core.methods import random_cam as ndcam_random_cam

from .conftest import make_input, make_net, peer_paths

# -- importing pytorch-grad-cam ---------------------------------------------------------------------------------------


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """Modules standing in for torchvision while pytorch-grad-cam is imported (only when torchvision is absent).

    pytorch-grad-cam 1.5.7 imports torchvision in three modules, all loaded by its ``__init__``, and uses it only in
    helpers these tests never call:

    * ``utils/model_targets.py``: ``import torchvision``; only ``FasterRCNNBoxScoreTarget`` calls
      ``torchvision.ops.box_iou`` (box matching for detectors);
    * ``utils/image.py``: ``Compose``, ``Normalize``, ``ToTensor``, used only by ``preprocess_image`` (turning an
      HxWx3 picture into a normalized tensor);
    * ``sess.py``: ``transforms.functional.resize``, used only by the SESS method (not defined by ndcam).

    No code path that computes a map (``BaseCAM``, the methods' weights, ``scale_cam_image`` -- OpenCV / SciPy --,
    the ``ClassifierOutput*`` and ``FinerWeightedTarget`` targets, ``dff`` -- scikit-learn) touches these names.
    Every stand-in name raises ``RuntimeError`` when called, so the stand-in cannot change a computed map: at worst a
    test fails loudly. The stand-in modules are visible only while ``pytorch_grad_cam`` is imported.
    """

    def unavailable(name: str):
        def refuse(*args, **kwargs):
            raise RuntimeError(f"{name} is a test stand-in (torchvision is not installed); pytorch-grad-cam called it")

        refuse.__qualname__ = refuse.__name__ = name.rsplit(".", 1)[-1]
        return refuse

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    tv.__path__ = transforms.__path__ = []  # packages, so that ``from torchvision.transforms import ...`` resolves
    for name in ("Compose", "Normalize", "ToTensor"):
        setattr(transforms, name, unavailable(f"torchvision.transforms.{name}"))
    functional.resize = unavailable("torchvision.transforms.functional.resize")  # type: ignore[attr-defined]
    ops.box_iou = unavailable("torchvision.ops.box_iou")  # type: ignore[attr-defined]
    tv.transforms, tv.ops, transforms.functional = transforms, ops, functional  # type: ignore[attr-defined]
    return {m.__name__: m for m in (tv, transforms, functional, ops)}


@pytest.fixture(scope="module")
def pgc():
    """The ``pytorch_grad_cam`` package (from ``NDCAM_PEERS`` folders or site-packages), or a skip."""
    with pytest.MonkeyPatch.context() as mp:
        for path in reversed(peer_paths()):
            mp.syspath_prepend(path)
        # its real dependencies first (imported without any stand-in present)
        for dep in ("cv2", "sklearn.decomposition", "ttach", "tqdm", "scipy.ndimage", "matplotlib.pyplot"):
            pytest.importorskip(dep, reason=f"pytorch-grad-cam needs {dep.split('.')[0]}")
        before = set(sys.modules)
        with pytest.MonkeyPatch.context() as stand_in:
            if importlib.util.find_spec("torchvision") is None:
                for name, module in _torchvision_stand_in().items():
                    stand_in.setitem(sys.modules, name, module)
            module = pytest.importorskip("pytorch_grad_cam")
        yield module
        # forget the modules that hold the stand-in, so no later test imports them from the cache
        for name in set(sys.modules) - before:
            if name == "pytorch_grad_cam" or name.startswith("pytorch_grad_cam."):
                del sys.modules[name]


def test_the_torchvision_stand_in_refuses_and_is_gone(pgc):
    tv = pgc.utils.model_targets.torchvision
    if getattr(tv, "__file__", None) is not None:
        pytest.skip("the real torchvision is installed: no stand-in")
    assert "torchvision" not in sys.modules  # only pytorch-grad-cam's modules hold it
    with pytest.raises(RuntimeError, match="stand-in"):
        pgc.utils.image.preprocess_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(RuntimeError, match="stand-in"):
        tv.ops.box_iou(torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(RuntimeError, match="stand-in"):
        pgc.sess.resize(torch.zeros(1, 4, 4), [2, 2])


class _Lift1d(nn.Module):
    """A 1D net shown to pytorch-grad-cam as a 2D net of height 1.

    pytorch-grad-cam handles only 4-D (2D) and 5-D (3D) tensors. The input ``(N, C, 1, L)`` is squeezed before the
    (copied) 1D net, and the target layer's output ``(N, C', L')`` is passed through ``probe`` as ``(N, C', 1, L')``
    and taken back (a forward hook), so pytorch-grad-cam hooks ``probe`` and sees a 2D layer. No value changes: the
    activations, the scores and all derivatives (the Hessian-vector product included) are those of the 1D net. The
    probe's input is a copy and the way back an index, not views, because pytorch-grad-cam's
    ``ActivationsAndGradients.clear`` calls ``detach_()`` on the stored activations and gradients, which PyTorch refuses
    for views. ``probe`` is looked up on every call, so Ablation-CAM may swap it for its ablation layer.
    """

    def __init__(self, net: nn.Module, layer: str):
        super().__init__()
        self.net = copy.deepcopy(net)
        self.probe = nn.Identity()
        getattr(self.net, layer).register_forward_hook(lambda m, i, out: self.probe(out.unsqueeze(2).clone())[:, :, 0])

    def forward(self, x):
        return self.net(x.squeeze(2))


def _for_pgc(model: nn.Module, layer: str, x: torch.Tensor):
    """(model, target layer module, input) as pytorch-grad-cam takes them for ``model``'s layer ``layer``."""
    if x.ndim == 3:
        lifted = _Lift1d(model, layer)
        return lifted, lifted.probe, x.unsqueeze(2)
    return model, getattr(model, layer), x


def _release(cam) -> None:
    (cam.base_cam if hasattr(cam, "base_cam") else cam).activations_and_grads.release()


def _theirs(pgc, cls_name: str, model, layer, x, targets=None, *, target_cls=None, init=None, **call) -> np.ndarray:
    """pytorch-grad-cam's maps ``(N, *spatial)`` for ``model``'s layer ``layer`` (1D through :class:`_Lift1d`)."""
    m, lay, xp = _for_pgc(model, layer, x)
    cam = getattr(pgc, cls_name)(m, [lay], **(init or {}))
    try:
        if targets is not None:
            target_cls = target_cls or pgc.utils.model_targets.ClassifierOutputTarget
            call["targets"] = [target_cls(t) for t in targets]
        out = cam(input_tensor=xp, **call)
    finally:
        _release(cam)
    assert out.dtype == np.float32 and out.shape == (x.shape[0], *(xp.shape[2:]))
    return out.reshape(x.shape[0], *x.shape[2:])


def _zoom_like_pgc(raw: torch.Tensor, size) -> np.ndarray:
    """pytorch-grad-cam's 3D post-processing applied to non-negative layer-resolution maps ``(N, *S)``: each map
    shifted to minimum 0, ``scipy.ndimage.zoom`` (cubic spline) of it in float32 to ``size``, ReLU, min-max (see the
    module docstring)."""
    from scipy.ndimage import zoom

    out = []
    for m in raw.double().numpy():
        # shifted to minimum 0 first, as their normalization before the zoom does: the zoom pads with zeros
        # (mode="constant"), so it commutes with scaling but not with shifts
        z = zoom(np.float32(m - m.min()), [t / s for s, t in zip(m.shape, size)]).astype(np.float64)
        z = np.maximum(z, 0)  # the spline overshoots below 0; their aggregation clips before normalizing
        span = z.max() - z.min()  # 0 for an empty map (all channel weights negative): theirs is all 0 there
        out.append((z - z.min()) / span if span > 0 else np.zeros_like(z))
    return np.stack(out)


def _as_theirs(cam: ndcam.BaseCAM, x: torch.Tensor, targets, layer: str, **call) -> np.ndarray:
    """ndcam's maps post-processed as pytorch-grad-cam does: the default output, except for 3D layers coarser than
    the input (:func:`_zoom_like_pgc`)."""
    if x.ndim == 5 and layer != "act1":
        raw = cam(x, targets, upsample=False, normalize=False, **call)
        assert tuple(raw.shape[1:]) != tuple(x.shape[2:]), "the 3D zoom case must resize"
        return _zoom_like_pgc(raw, x.shape[2:])
    return cam(x, targets, **call).double().numpy()


def _assert_maps(ours: np.ndarray, theirs: np.ndarray, atol: float = 2e-6) -> None:
    assert theirs.max() > 0.99, "their maps are empty: the comparison would not discriminate"
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)


#: (rank, layer): 1D and 2D at the stride-2 layer (linear resizing, as ndcam); 3D at the input's resolution (both
#: resizings are the identity) and at the stride-2 layer (their spline zoom accounted for)
CASES = [(1, "feat"), (2, "feat"), (3, "act1"), (3, "feat")]
CASE_IDS = ["1d", "2d", "3d-act1", "3d-feat"]
ALL_RANKS = pytest.mark.parametrize("rank, layer", CASES, ids=CASE_IDS)
TARGETS = [0, 3, 1]

# -- methods with a channel weighting or a position-wise formula --------------------------------------------------------


@ALL_RANKS
@pytest.mark.parametrize(
    "theirs_name, ours_name, kw",
    [
        ("GradCAM", "gradcam", {}),
        ("GradCAMPlusPlus", "gradcam++", {}),
        ("XGradCAM", "xgradcam", {}),
        ("HiResCAM", "hirescam", {}),
        ("GradCAMElementWise", "gradcamelementwise", {}),
        ("LayerCAM", "layercam", {}),
        ("FEM", "fem", {"variant": "pytorch-grad-cam"}),
        ("ShapleyCAM", "shapleycam", {"target": "logit"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_agrees_on_every_rank(pgc, rank, layer, theirs_name, ours_name, kw):
    model, x = make_net(rank), make_input(rank)
    theirs = _theirs(pgc, theirs_name, model, layer, x, TARGETS)
    ours = _as_theirs(ndcam.get_method(ours_name)(model, layer, **kw), x, TARGETS, layer)
    _assert_maps(ours, theirs)


@ALL_RANKS
def test_shapleycam_rest_agrees_and_is_per_sample_in_both(pgc, rank, layer):
    model, x = make_net(rank), make_input(rank)
    rest = pgc.utils.model_targets.ClassifierOutputReST
    theirs = _theirs(pgc, "ShapleyCAM", model, layer, x, TARGETS, target_cls=rest)
    ours = _as_theirs(ndcam.ShapleyCAM(model, layer), x, TARGETS, layer)  # ReST is ndcam's default target
    _assert_maps(ours, theirs)
    # one sample alone: their ReST does not couple the samples of a batch either
    alone = _theirs(pgc, "ShapleyCAM", model, layer, x[1:2], TARGETS[1:2], target_cls=rest)
    np.testing.assert_allclose(alone, theirs[1:2], atol=2e-6, rtol=0)
    # and ReST is not the logit: the comparison discriminates
    logit = _theirs(pgc, "ShapleyCAM", model, layer, x, TARGETS)
    assert np.abs(logit - theirs).max() > 1e-2


@ALL_RANKS
def test_fem_paper_variant_is_not_theirs(pgc, rank, layer):
    model, x = make_net(rank), make_input(rank)
    theirs = _theirs(pgc, "FEM", model, layer, x, TARGETS, init={"k": 1.0})
    assert np.abs(_as_theirs(ndcam.FEM(model, layer, k=1.0), x, TARGETS, layer) - theirs).max() > 0.1
    _assert_maps(_as_theirs(ndcam.FEM(model, layer, k=1.0, variant="pytorch-grad-cam"), x, TARGETS, layer), theirs)


@ALL_RANKS
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_finercam_agrees(pgc, rank, layer, alpha):
    model, x = make_net(rank), make_input(rank)
    for target in (2, None):  # a class for the whole batch, or each sample's top class
        theirs = _theirs(pgc, "FinerCAM", model, layer, x, None, alpha=alpha, target_idx=target,
                         comparison_categories=[1, 2, 3])
        ours = _as_theirs(ndcam.FinerCAM(model, layer, alpha=alpha, n_similar=3), x, target, layer)
        _assert_maps(ours, theirs)


@ALL_RANKS
def test_randomcam_agrees_given_the_same_weights(pgc, rank, layer, monkeypatch):
    model, x = make_net(rank), make_input(rank)
    channels = {"feat": 8, "act1": 6}[layer]
    rng = np.random.default_rng(3)
    weights = rng.uniform(-1, 1, size=(x.shape[0], channels))  # a different row per sample, as pytorch-grad-cam draws
    weights[:, 0] = 1.0  # keep every map non-empty after the ReLU
    asked = []

    def their_draw(low, high, size):
        asked.append((low, high, tuple(size)))
        return weights.copy()

    def our_draw(n, c, seed, *, dtype=torch.float64, device="cpu"):
        assert (n, c) == weights.shape
        return torch.as_tensor(weights, dtype=dtype, device=device)

    # random_cam.py uses numpy only for this draw; replacing its ``np`` keeps the patch to that module
    monkeypatch.setattr(pgc.random_cam, "np", SimpleNamespace(random=SimpleNamespace(uniform=their_draw)))
    monkeypatch.setattr(ndcam_random_cam, "random_weights", our_draw)
    theirs = _theirs(pgc, "RandomCAM", model, layer, x, TARGETS)
    assert asked == [(-1, 1, weights.shape)]
    _assert_maps(_as_theirs(ndcam.RandomCAM(model, layer), x, TARGETS, layer), theirs)


# -- perturbation methods (2D-only code there: 1D through the lift) ------------------------------------------------------

RANKS_1_2 = pytest.mark.parametrize("rank, layer", [(1, "feat"), (2, "feat"), (1, "act1"), (2, "act1")],
                                    ids=["1d-feat", "2d-feat", "1d-act1", "2d-act1"])


@RANKS_1_2
def test_ablationcam_agrees(pgc, rank, layer):
    model, x = make_net(rank), make_input(rank)
    theirs = _theirs(pgc, "AblationCAM", model, layer, x, TARGETS)
    # their scores are rounded to float32 before (score - ablated score) / score cancels digits: measured 4e-6
    _assert_maps(_as_theirs(ndcam.AblationCAM(model, layer), x, TARGETS, layer), theirs, atol=2e-5)


@RANKS_1_2
def test_scorecam_agrees_with_the_papers_mask_upsampling(pgc, rank, layer, monkeypatch):
    model, x = make_net(rank), make_input(rank)
    ours = _as_theirs(ndcam.ScoreCAM(model, layer), x, TARGETS, layer)
    plain = _theirs(pgc, "ScoreCAM", model, layer, x, TARGETS)

    def half_pixel(size):
        return nn.Upsample(size=size, mode="bilinear", align_corners=False)

    monkeypatch.setattr(pgc.score_cam.torch.nn, "UpsamplingBilinear2d", half_pixel)
    patched = _theirs(pgc, "ScoreCAM", model, layer, x, TARGETS)
    _assert_maps(ours, patched)
    if layer == "act1":  # masks at the input's resolution: no upsampling on either side
        np.testing.assert_allclose(plain, patched, atol=1e-7, rtol=0)
    else:  # their align_corners=True masks: a small, real difference
        assert 1e-4 < np.abs(plain - ours).max() < 2e-2


# -- principal components: sign conventions --------------------------------------------------------------------------


def _captured(model, layer, x, target=None):
    """(activations, gradients of the summed target logits) of ``model``'s ``layer``, in float64."""
    store = {}
    handle = getattr(model, layer).register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        out = model(x)
    finally:
        handle.remove()
    a = store["a"]
    g = None
    if target is not None:
        (g,) = torch.autograd.grad(out[torch.arange(x.shape[0]), torch.as_tensor(target)].sum(), a)
    return a.detach(), g


def _finish_like_pgc(raw: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """``minmax(resize(relu(raw)))`` with pytorch-grad-cam's resizing (ndcam's linear one below 3D)."""
    m = torch.relu(raw)
    if x.ndim == 5 and tuple(m.shape[1:]) != tuple(x.shape[2:]):
        return _zoom_like_pgc(m, x.shape[2:])
    up = ndcam.ops.upsample(m, tuple(x.shape[2:]))
    return ndcam.ops.minmax_normalize(up).numpy()


def _one_of_two_signs(raw: torch.Tensor, x: torch.Tensor, theirs: np.ndarray) -> list[int]:
    """Per sample, the sign ``s`` with ``theirs == finish(s * raw)`` (asserted); the signs are returned."""
    plus, minus = _finish_like_pgc(raw, x), _finish_like_pgc(-raw, x)
    signs = []
    for i in range(x.shape[0]):
        err = {1: np.abs(plus[i] - theirs[i]).max(), -1: np.abs(minus[i] - theirs[i]).max()}
        s = min(err, key=err.get)
        assert err[s] < 2e-6, f"sample {i}: neither sign gives their map ({err})"
        signs.append(s)
    return signs


@ALL_RANKS
def test_eigencam_agrees_up_to_the_svd_sign(pgc, rank, layer):
    model, x = make_net(rank), make_input(rank)
    a, g = _captured(model, layer, x, TARGETS)
    for theirs_name, raw, ours_cls in (("EigenCAM", ndcam.ops.first_principal_component(a), ndcam.EigenCAM),
                                       ("EigenGradCAM", ndcam.core.methods.activation.eigengradcam_map(a, g),
                                        ndcam.EigenGradCAM)):
        theirs = _theirs(pgc, theirs_name, model, layer, x, TARGETS)
        _one_of_two_signs(raw, x, theirs)
        # ndcam's own map is the ``+`` construction (its sign already fixed)
        np.testing.assert_allclose(_as_theirs(ours_cls(model, layer), x, TARGETS, layer), _finish_like_pgc(raw, x),
                                   atol=1e-6, rtol=0)


@ALL_RANKS
@pytest.mark.parametrize("kernel", ["sigmoid", "rbf"])
def test_kpcacam_agrees_after_sklearns_sign_rule(pgc, rank, layer, kernel):
    model, x = make_net(rank), make_input(rank, seed=6)  # an input where the two sign rules disagree at ``feat``
    a, _ = _captured(model, layer, x)
    proj = ndcam.core.methods.factorization.kpca_map(a, kernel).double()  # ndcam's orientation
    flat = proj.reshape(proj.shape[0], -1)
    sklearn_sign = flat.gather(1, flat.abs().argmax(1, keepdim=True)).sign()  # svd_flip: largest entry positive
    theirs = _theirs(pgc, "KPCA_CAM", model, layer, x, TARGETS, init={"kernel": kernel})
    signs = _one_of_two_signs(proj, x, theirs)
    assert signs == sklearn_sign.flatten().int().tolist()
    if layer == "feat":
        assert -1 in signs, "no sample where the sign rules differ: the sign check would not discriminate"
    ours = _as_theirs(ndcam.KPCACAM(model, layer, kernel=kernel), x, TARGETS, layer)
    np.testing.assert_allclose(ours, _finish_like_pgc(proj, x), atol=1e-6, rtol=0)


# -- Deep Feature Factorization --------------------------------------------------------------------------------------


class _Identity(nn.Module):
    """The activations are the input: ``feat`` is an identity, followed by a small head."""

    def __init__(self, channels: int):
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        return self.fc(self.feat(x).flatten(2).mean(-1))


def _planted(shape, channels: int = 6, k: int = 3, seed: int = 0):
    """Activations ``(1, C, *shape)`` = W H with a unique NMF: each concept owns a channel (W[j, j'] = 0 for j != j')
    and each position belongs to at most one concept (H has disjoint supports; some positions are background, so
    every channel's minimum -- the offset both subtract -- is 0). Returns (activations, planted maps (k, *shape))."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(channels, k, generator=g, dtype=torch.float64) + 0.1
    w[:k] = torch.eye(k, dtype=torch.float64)
    label = torch.randint(0, k + 1, shape, generator=g)  # k: background
    magnitude = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
    h = torch.stack([torch.where(label == j, magnitude, 0.0) for j in range(k)])
    return torch.einsum("ck,k...->c...", w, h)[None], h


def _match(a: np.ndarray, b: np.ndarray):
    """The concept order of ``a`` closest to ``b`` (``(k, ...)`` each): (max error, permutation)."""
    return min((float(np.abs(a[list(p)] - b).max()), p) for p in itertools.permutations(range(len(a))))


@pytest.mark.parametrize("shape", [(40,), (8, 10)], ids=["1d", "2d"])
def test_dff_recovers_the_same_planted_concepts(pgc, shape):
    k = 3
    x, h = _planted(shape, k=k)
    model = _Identity(x.shape[1]).double().eval()
    m, lay, xp = _for_pgc(model, "feat", x)
    dff = pgc.DeepFeatureFactorization(m, lay)
    try:
        concepts, explanations = dff(xp, n_components=k)
    finally:
        dff.activations_and_grads.release()
    theirs = explanations[0].reshape(k, *shape)
    maps, vectors = ndcam.DeepFeatureFactorization(model, "feat", n_concepts=k).concepts(x)
    ours = maps[0].double().numpy()
    truth = ndcam.ops.minmax_normalize(h).numpy()
    err_theirs, _ = _match(theirs, truth)
    err_ours, _ = _match(ours, truth)
    assert err_theirs < 2e-4 and err_ours < 1e-2, (err_theirs, err_ours)  # measured 5e-5 and 4e-3
    err, perm = _match(ours, theirs)
    assert err < 1e-2
    # the concept vectors agree in direction (NMF fixes them up to scale; their offset is 0 here): measured 2.4e-3
    unit = concepts / np.linalg.norm(concepts, axis=0)
    ours_w = vectors[0].double().numpy()[:, list(perm)]
    np.testing.assert_allclose(ours_w / np.linalg.norm(ours_w, axis=0), unit, atol=1e-2)
    # the gap is the multiplicative updates' slow convergence: more of them close it
    longer = ndcam.DeepFeatureFactorization(model, "feat", n_concepts=k, iterations=3000).concepts(x)[0][0]
    assert _match(longer.double().numpy(), theirs)[0] < 1e-3
