r"""Real torchvision architectures: the automatic layer, and agreement with pytorch-grad-cam (skipped without them).

Runs when torchvision can be imported, from site-packages or from the ``NDCAM_PEERS`` folders (``os.pathsep``-
separated, see :func:`tests.conftest.peer_paths`); the agreement tests also need pytorch-grad-cam
(``tests/test_peers_pgc.py`` says how to get it). The models are torchvision's own code with random weights (seeded;
nothing is downloaded), small inputs, eval mode.

**Obtaining torchvision.** It is not a dependency, and it must not be installed into the test environment with its
requirements: every torchvision wheel pins one torch release, so pip would replace the CPU torch. Unpack the release
paired with the installed torch (torchvision 0.28 for torch 2.13; any release whose model code runs on it will do)
into a folder of its own, without its dependencies::

    pip install --no-deps --target .peers/torchvision torchvision==0.28.0   # what bash dev.sh does; found there
    pip install --no-deps --target /tmp/peers/tv torchvision==0.28.0        # or anywhere, with NDCAM_PEERS
    # or: pip download --no-deps torchvision==0.28.0 -d /tmp/tvwhl && unzip /tmp/tvwhl/torchvision-*.whl -d /tmp/peers/tv
    NDCAM_PEERS=/tmp/peers/tv:/tmp/peers/pgc pytest tests/test_real_architectures.py   # -m "not slow": the quick half

On PyPI the Linux wheels are CUDA builds, whose C++ operators (``torchvision/_C.so``: detection boxes, RoI pooling,
deformable convolution) cannot load with a CPU torch. The models tested here never call those operators and
torchvision imports without them, except that its import registers fake kernels for two of them (``nms``,
``qnms``), which fails with "operator torchvision::nms does not exist". :func:`_import_torchvision` then defines those
two operator *schemas* (no kernel: calling ``torchvision.ops.nms`` still raises) and imports again. The model code is
torchvision's unchanged; the only other adaptations are constructor arguments (``vit_b_16(image_size=64)``, MaxViT
with ``partition_size=2`` at 64 x 64, MViT-v2-S at 8 x 64 x 64 through its builder's ``spatial_size`` and
``temporal_size``).

**What is checked.**

* ``layers=None`` picks the layer an expert passes, with the right :class:`ndcam.TokenGrid` (:data:`ARCHS`), on the
  models as torchvision initialises them -- ``vit_b_16``'s head is zero there, so its output depends on no token --
  and gives the expert's maps.
* Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM and LayerCAM equal pytorch-grad-cam's at the same layer, for K = 2 target
  classes per sample (one ndcam call, K pytorch-grad-cam calls), after the relation ``tests/test_peers_pgc.py``
  documents (2D: the same expression; 3D: their cubic-spline zoom of the layer map); Eigen-CAM up to the sign of its
  principal component. Random-init deep nets lose the scale of their activations (efficientnet_b0's logits are ~1e-14,
  where pytorch-grad-cam's ``1e-7`` normalization guard dominates its maps), so :func:`calibrate` first gives the
  BatchNorm layers running statistics of random inputs, as training would. float32 (measured <= 1.1e-5, ``atol``
  3e-5) except ViT-B/16, whose XGrad-CAM divides by channel sums of LayerNorm outputs (near zero: float32 rounding
  reaches 1.4e-4 on both sides) and runs in float64 (measured 1.8e-7).
* Score-CAM (with the paper's mask upsampling, see ``tests/test_peers_pgc.py``) and Ablation-CAM on small inputs.

**pytorch-grad-cam's differences found on these models** (each asserted as a relation):

* **Ablation-CAM on layers with negative activations**: pytorch-grad-cam's ``AblationLayer`` zeroes a channel only if
  the smallest activation of the whole ablation batch is exactly 0; otherwise it sets the channel to that minimum
  minus ``1e7`` ("deviating from the paper", their comment says). On ReLU outputs (ResNet, RegNet) both zero the
  channel and agree; on Hardswish/SiLU/ConvNeXt outputs (MobileNetV3, EfficientNet, ConvNeXt) they differ, and agree
  once their ablation layer zeroes channels as the paper does.
* **In-place operations after the target layer**: torchvision's DenseNet applies ``F.relu(features, inplace=True)``
  to the output of ``features``. pytorch-grad-cam keeps a reference to that output, so it reads the activations
  after the ReLU but the gradient with respect to the tensor before it (a mix of two tensors); ndcam records the
  layer's output before any later in-place operation can change it. HiResCAM and LayerCAM are unaffected
  (``g * A`` is the same where the ReLU's gradient is non-zero); Grad-CAM, Grad-CAM++, XGrad-CAM differ, and agree
  with torchvision's ReLU made out-of-place.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ndcam
from ndcam.core.layers import auto_choice

from .conftest import peer_paths
from .test_peers_pgc import _finish_like_pgc, _one_of_two_signs, _zoom_like_pgc

# -- importing torchvision ------------------------------------------------------------------------------------------

#: the ``torch.library`` fragment defining the schemas of torchvision's ``nms``/``qnms`` when its C++ operators cannot
#: load (see the module docstring); kept alive for the session (a collected fragment removes its definitions)
_TORCHVISION_SCHEMAS: list[torch.library.Library] = []


def _import_torchvision() -> types.ModuleType:
    """``import torchvision``, or a skip; with a CPU torch and a CUDA wheel, after defining the two operator schemas
    its import needs (module docstring)."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (the module docstring says how to get it without touching torch)")
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            pytest.skip(f"torchvision cannot be imported: {err}")
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported package
    if not _TORCHVISION_SCHEMAS:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_SCHEMAS.append(lib)
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        pytest.skip(f"torchvision cannot be imported without its C++ operators: {err}")


#: where ``bash dev.sh`` unpacks torchvision for these tests (``pip install --no-deps --target``; git ignores it)
LOCAL_TORCHVISION = Path(__file__).resolve().parents[1] / ".peers" / "torchvision"


@pytest.fixture(scope="module")
def tv():
    """The ``torchvision`` package (``NDCAM_PEERS`` folders, then ``.peers/torchvision``, first on ``sys.path``), or a
    skip. Afterwards torchvision and the pytorch-grad-cam imported with it leave ``sys.modules`` again, so later test
    modules see the environment they would see without this one."""
    folders = peer_paths() + ([str(LOCAL_TORCHVISION)] if LOCAL_TORCHVISION.is_dir() else [])
    with pytest.MonkeyPatch.context() as mp:
        for path in reversed(folders):
            mp.syspath_prepend(path)
        try:
            module = _import_torchvision()
            import torchvision.models.video  # noqa: F401 -- not imported by the package itself

            yield module
        finally:
            for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "pytorch_grad_cam")]:
                del sys.modules[name]


@pytest.fixture(scope="module")
def pgc(tv):
    """``pytorch_grad_cam``, imported with the real torchvision, or a skip."""
    for dep in ("cv2", "sklearn.decomposition", "ttach", "tqdm", "scipy.ndimage", "matplotlib.pyplot"):
        pytest.importorskip(dep, reason=f"pytorch-grad-cam needs {dep.split('.')[0]}")
    return pytest.importorskip("pytorch_grad_cam")


# -- the architectures ---------------------------------------------------------------------------------------------


def _small_mvit(tv) -> nn.Module:
    """torchvision's ``mvit_v2_s`` for 8 x 64 x 64 clips: its builder fixes ``spatial_size``/``temporal_size`` (224,
    16), so they are replaced on their way to ``_mvit``; the model code is unchanged."""
    mvit = tv.models.video.mvit
    if not hasattr(mvit, "_mvit"):
        pytest.skip("this torchvision's MViT builder has no _mvit to size the model with")
    builder = mvit._mvit

    def sized(*args, **kwargs):
        kwargs.update(spatial_size=(64, 64), temporal_size=8)
        return builder(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mvit, "_mvit", sized)
        return tv.models.video.mvit_v2_s()


def _small_maxvit(tv) -> nn.Module:
    """MaxViT-T's configuration with 2 x 2 windows, for 64 x 64 images (its 7 x 7 windows need 224 x 224)."""
    return tv.models.maxvit.MaxVit(input_size=(64, 64), stem_channels=64, partition_size=2,
                                   block_channels=[64, 128, 256, 512], block_layers=[2, 2, 5, 2], head_dim=32,
                                   stochastic_depth_prob=0.2)


def _tokens_to_grid(grid: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's ``reshape_transform`` for class-token models: drop the class token, lay the patch tokens on
    ``grid``, channels first (their ViT tutorial's transform, for any rank)."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], *grid, t.shape[2]).movedim(-1, 1)

    return reshape


def _channels_first(t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``reshape_transform`` for channels-last maps (Swin)."""
    return t.movedim(-1, 1)


@dataclass(frozen=True)
class Arch:
    """A torchvision model, its input, the layer an expert names and the reshape it needs (ndcam's, and
    pytorch-grad-cam's ``reshape_transform``)."""

    factory: Callable[[types.ModuleType], nn.Module]
    shape: tuple[int, ...]
    layer: str
    grid: ndcam.TokenGrid | None = None
    theirs_reshape: Callable | None = None
    slow: bool = False


I2, V3 = (3, 64, 64), (3, 8, 32, 32)
ARCHS: dict[str, Arch] = {
    "resnet18": Arch(lambda tv: tv.models.resnet18(), I2, "layer4"),
    "resnet50": Arch(lambda tv: tv.models.resnet50(), I2, "layer4", slow=True),
    # ``features`` ends with norm5; the forward's F.relu is not a module (see the module docstring)
    "densenet121": Arch(lambda tv: tv.models.densenet121(), I2, "features", slow=True),
    "mobilenet_v2": Arch(lambda tv: tv.models.mobilenet_v2(), I2, "features"),
    "mobilenet_v3_small": Arch(lambda tv: tv.models.mobilenet_v3_small(), I2, "features"),
    "efficientnet_b0": Arch(lambda tv: tv.models.efficientnet_b0(), I2, "features"),
    "convnext_tiny": Arch(lambda tv: tv.models.convnext_tiny(), I2, "features", slow=True),
    "regnet_y_400mf": Arch(lambda tv: tv.models.regnet_y_400mf(), I2, "trunk_output"),
    "vgg11_bn": Arch(lambda tv: tv.models.vgg11_bn(), I2, "features.27", slow=True),  # the ReLU before the last pool
    # the head reads the class token: the final norm's patch tokens get no gradient; the norm feeding the last attention
    "vit_b_16": Arch(lambda tv: tv.models.vit_b_16(image_size=64), I2, "encoder.layers.encoder_layer_11.ln_1",
                     ndcam.TokenGrid((4, 4), prefix=1), _tokens_to_grid((4, 4)), slow=True),
    "swin_t": Arch(lambda tv: tv.models.swin_t(), I2, "norm", ndcam.TokenGrid((2, 2), channels_last=True),
                   _channels_first),
    "maxvit_t_p2": Arch(_small_maxvit, I2, "blocks.3", slow=True),
    "r3d_18": Arch(lambda tv: tv.models.video.r3d_18(), V3, "layer4"),
    "mc3_18": Arch(lambda tv: tv.models.video.mc3_18(), V3, "layer4", slow=True),
    "r2plus1d_18": Arch(lambda tv: tv.models.video.r2plus1d_18(), V3, "layer4", slow=True),
    # its last pooling is a fixed 2 x 7 x 7 average: 16 x 224 x 224 clips at least
    "s3d": Arch(lambda tv: tv.models.video.s3d(), (3, 16, 224, 224), "features", slow=True),
    # video transformers merge/pool space and keep time: (4, 16, 16) patches -> (4, 2, 2)
    "swin3d_t": Arch(lambda tv: tv.models.video.swin3d_t(), (3, 8, 64, 64), "norm",
                     ndcam.TokenGrid((4, 2, 2), channels_last=True), _channels_first, slow=True),
    "mvit_v2_s": Arch(_small_mvit, (3, 8, 64, 64), "blocks.15.norm1", ndcam.TokenGrid((4, 2, 2), prefix=1),
                      _tokens_to_grid((4, 2, 2)), slow=True),
}


def _params(names) -> list:
    return [pytest.param(n, marks=[pytest.mark.slow] if ARCHS[n].slow else [], id=n) for n in names]


def _input(arch: Arch, n: int = 2, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, *arch.shape, generator=torch.Generator().manual_seed(1)).to(dtype)


def calibrate(model: nn.Module, shape: tuple[int, ...], seed: int = 5) -> nn.Module:
    """The BatchNorm layers' running statistics of random inputs (cumulative averages over two batches, in training
    mode), as training would leave them; then eval mode. Without them random-init deep nets lose the scale of their
    activations with depth (module docstring)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        g = torch.Generator().manual_seed(seed)
        momentum = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(4, *shape, generator=g))
        for m, mom in zip(norms, momentum):
            m.momentum = mom
    return model.eval()


def _build(tv, name: str, calibrated: bool = True, dtype=torch.float32) -> nn.Module:
    arch = ARCHS[name]
    torch.manual_seed(0)
    model = arch.factory(tv).eval()
    if calibrated:
        calibrate(model, arch.shape)
        if name == "vit_b_16":  # torchvision's zero head gives every map 0: a random head, as training would
            nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.to(dtype)


# -- the automatic layer ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(ARCHS))
def test_the_automatic_layer_is_the_experts(tv, name):
    arch = ARCHS[name]
    model = _build(tv, name, calibrated=False)  # as torchvision initialises it
    x = _input(arch)
    (chosen, module), reshape = auto_choice(model, x)[0][0], auto_choice(model, x)[1]
    assert chosen == arch.layer and module is model.get_submodule(arch.layer)
    if arch.grid is None:
        assert reshape is None
    else:
        assert isinstance(reshape, ndcam.TokenGrid)
        assert (reshape.grid, reshape.prefix, reshape.channels_last) == (
            arch.grid.grid, arch.grid.prefix, arch.grid.channels_last)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = ndcam.GradCAM(model)(x)
        expert = ndcam.GradCAM(model, arch.layer, reshape=arch.grid)(x)
    assert not [w for w in caught if not issubclass(w.category, ndcam.ConstantMapWarning)], [str(w.message) for w in
                                                                                             caught]
    torch.testing.assert_close(auto, expert)
    assert auto.shape == (2, *arch.shape[1:])
    if name == "vit_b_16":  # the zero head: no gradient anywhere, empty maps, and a warning says so
        assert caught and not auto.any()


# -- agreement with pytorch-grad-cam ----------------------------------------------------------------------------------


def _theirs(pgc, cls: str, model, arch: Arch, x, targets: torch.Tensor, **init) -> np.ndarray:
    """pytorch-grad-cam's maps ``(N, K, *spatial)`` for the targets ``(N, K)``: one call per target column."""
    cam = getattr(pgc, cls)(model, [model.get_submodule(arch.layer)], reshape_transform=arch.theirs_reshape, **init)
    target = pgc.utils.model_targets.ClassifierOutputTarget
    try:
        maps = [cam(input_tensor=x, targets=[target(int(t)) for t in targets[:, k]]) for k in range(targets.shape[1])]
    finally:
        cam.activations_and_grads.release()
    return np.stack(maps, 1)


def _ours(method: str, model, arch: Arch, x, targets: torch.Tensor, **kw) -> np.ndarray:
    """ndcam's maps ``(N, K, *spatial)`` as pytorch-grad-cam post-processes them: the default output in 2D, their
    spline zoom of the layer map in 3D (``tests/test_peers_pgc.py``)."""
    cam = ndcam.get_method(method)(model, arch.layer, reshape=arch.grid, **kw)
    if x.ndim == 5:
        raw = cam(x, targets, upsample=False, normalize=False)
        assert raw.shape[2:] != x.shape[2:]
        return _zoom_like_pgc(raw.flatten(0, 1), x.shape[2:]).reshape(*raw.shape[:2], *x.shape[2:])
    return cam(x, targets).double().numpy()


def _top(model, x, k: int = 2) -> torch.Tensor:
    """Each sample's ``k`` highest-scoring classes ``(N, k)``: positive scores, so the maps are rarely empty."""
    with torch.no_grad():
        return model(x).topk(k, dim=1).indices


def _assert_maps(ours: np.ndarray, theirs: np.ndarray, atol: float) -> None:
    # random weights leave some maps empty (every channel weight negative): both sides give 0 there
    assert theirs.max() > 0.99, "their maps are all empty: the comparison would not discriminate"
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)


GRADIENT = [("GradCAM", "gradcam"), ("GradCAMPlusPlus", "gradcam++"), ("XGradCAM", "xgradcam"),
            ("HiResCAM", "hirescam"), ("LayerCAM", "layercam")]
AGREEING = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny",
            "regnet_y_400mf", "vgg11_bn", "vit_b_16", "swin_t", "maxvit_t_p2", "r3d_18", "mc3_18", "r2plus1d_18",
            "swin3d_t", "mvit_v2_s"]


@pytest.mark.parametrize("name", _params(AGREEING))
def test_gradient_methods_agree_with_pytorch_grad_cam(tv, pgc, name):
    arch = ARCHS[name]
    dtype = torch.float64 if name == "vit_b_16" else torch.float32  # see the module docstring
    model = _build(tv, name, dtype=dtype)
    x = _input(arch, dtype=dtype)
    targets = _top(model, x)
    atol = 2e-6 if dtype == torch.float64 else 3e-5
    for theirs_name, ours_name in GRADIENT:
        theirs = _theirs(pgc, theirs_name, model, arch, x, targets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ndcam.ConstantMapWarning)  # an empty map is theirs too (all 0)
            ours = _ours(ours_name, model, arch, x, targets)
        _assert_maps(ours, theirs, atol)
    # Eigen-CAM: the same principal component, its sign left to their SVD (tests/test_peers_pgc.py)
    store = {}
    handle = model.get_submodule(arch.layer).register_forward_hook(lambda m, i, o: store.update(a=o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    a = store["a"] if arch.grid is None else arch.grid(store["a"])
    pc = ndcam.ops.first_principal_component(a.double())
    theirs = _theirs(pgc, "EigenCAM", model, arch, x, targets[:, :1])[:, 0]
    _one_of_two_signs(pc, x, theirs)
    ours = _ours("eigencam", model, arch, x, targets[:, :1])[:, 0]
    np.testing.assert_allclose(ours, _finish_like_pgc(pc, x), atol=5 * atol, rtol=0)


def _zero_ablation(pgc):
    """pytorch-grad-cam's ablation layer, zeroing the ablated channel whatever the activations' minimum (the
    paper's ablation)."""

    class ZeroAblation(pgc.ablation_layer.AblationLayer):
        def __call__(self, x):
            out = self.activations
            for i in range(out.size(0)):
                out[i, self.indices[i]] = 0
            return out

    return ZeroAblation()


@pytest.mark.parametrize("name, relu", [("resnet18", True), ("regnet_y_400mf", True), ("mobilenet_v3_small", False)],
                         ids=["resnet18", "regnet_y_400mf", "mobilenet_v3_small"])
def test_ablationcam_agrees_where_both_ablate_by_zeroing(tv, pgc, name, relu):
    arch = ARCHS[name]
    model = _build(tv, name)
    x = _input(arch, n=1)
    targets = _top(model, x, 1)
    ours = _ours("ablationcam", model, arch, x, targets)
    _assert_maps(ours, _theirs(pgc, "AblationCAM", model, arch, x, targets, ablation_layer=_zero_ablation(pgc)),
                 atol=3e-5)
    plain = _theirs(pgc, "AblationCAM", model, arch, x, targets)
    if relu:  # a ReLU output's minimum is 0: their default ablation zeroes too
        np.testing.assert_allclose(plain, ours, atol=3e-5, rtol=0)
    else:  # Hardswish outputs are negative somewhere: they ablate with min - 1e7
        assert np.abs(plain - ours).max() > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_scorecam_agrees_with_the_papers_mask_upsampling(tv, pgc, name, monkeypatch):
    arch = ARCHS[name]
    model = _build(tv, name)
    x = _input(arch, n=1)
    targets = _top(model, x, 1)

    def half_pixel(size):
        return nn.Upsample(size=size, mode="bilinear", align_corners=False)

    monkeypatch.setattr(pgc.score_cam.torch.nn, "UpsamplingBilinear2d", half_pixel)
    _assert_maps(_ours("scorecam", model, arch, x, targets), _theirs(pgc, "ScoreCAM", model, arch, x, targets),
                 atol=3e-5)


@pytest.mark.slow
def test_densenet_their_maps_mix_the_in_place_relu_output_with_the_gradient_before_it(tv, pgc, monkeypatch):
    name = "densenet121"
    arch = ARCHS[name]
    model = _build(tv, name)
    x = _input(arch)
    targets = _top(model, x)
    densenet = sys.modules[type(model).__module__]
    functional = densenet.F

    def out_of_place() -> types.SimpleNamespace:
        """torch.nn.functional for torchvision's densenet module, with ``relu`` ignoring ``inplace=True``."""
        ns = types.SimpleNamespace(**{k: getattr(functional, k) for k in dir(functional) if not k.startswith("__")})
        ns.relu = lambda t, inplace=False: functional.relu(t)
        return ns

    for theirs_name, ours_name in GRADIENT:
        ours = _ours(ours_name, model, arch, x, targets)
        plain = _theirs(pgc, theirs_name, model, arch, x, targets)
        with monkeypatch.context() as mp:
            mp.setattr(densenet, "F", out_of_place())
            fixed = _theirs(pgc, theirs_name, model, arch, x, targets)
        _assert_maps(ours, fixed, atol=3e-5)
        if theirs_name in ("HiResCAM", "LayerCAM"):  # g * A: the ReLU's zero gradient hides the difference
            np.testing.assert_allclose(plain, fixed, atol=3e-5, rtol=0)
        else:
            assert np.abs(plain - ours).max() > 0.05
    # ndcam's maps are those of the layer's output, as the model produced it, also without the in-place ReLU
    with monkeypatch.context() as mp:
        mp.setattr(densenet, "F", out_of_place())
        same = _ours("gradcam", model, arch, x, targets)
    np.testing.assert_allclose(same, _ours("gradcam", model, arch, x, targets), atol=1e-6, rtol=0)
