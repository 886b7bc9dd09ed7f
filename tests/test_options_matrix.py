"""Every generic option works with every registered method, or is refused clearly before the model runs (issue 10).

The matrix is generated from the registry (:func:`ndcam.methods`): a method added later is covered without editing
this file. A method that cannot honour an option declares it in ``unsupported`` (``{option: why}``); the test checks
both directions -- a declared option is refused with an :class:`ndcam.NdcamError` naming it *before any forward
pass*, an undeclared one gives finite maps of the right shape.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import ndcam
import ndcam.app.cli
from ndcam.methods.base import OPTIONS, REGISTRY

from .conftest import GapNet, make_input, make_net
from .test_inputs import TwoInputs
from .test_tokens import TinyViT

METHODS = ndcam.methods()
N = 2
#: small settings for the slow methods (fewer noisy / path samples, fewer NMF steps)
FAST = {"sscam": {"n_samples": 3}, "iscam": {"n_samples": 3}, "smoothgradcampp": {"n_samples": 2},
        "dff": {"iterations": 20}}
#: methods whose map is a first principal component already: eigen smoothing leaves it unchanged by design (their
#: ``channel_maps`` are chosen so), which the matrix checks instead of a change
PRINCIPAL = {"eigencam", "eigengradcam"}


def _counting(model: torch.nn.Module) -> list[int]:
    """Count the model's forward calls (a pre-hook on the top module)."""
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    return calls


def _case(method: str, option: str):
    """``(model, x, layers, constructor options, call options, expected spatial shapes)`` for one cell."""
    cls = ndcam.get_method(method)
    own_layers = method in ("guidedbackprop", "fullgrad")
    ctor: dict = dict(FAST.get(method, {}))
    call: dict = {}
    if option == "reshape":
        grid = (6,)
        torch.manual_seed(0)
        model = TinyViT(1, grid).double().eval()
        x = torch.randn(N, 1, 12, dtype=torch.float64)
        layers = "block"
        ctor["reshape"] = ndcam.TokenGrid(grid, prefix=1)
        return model, x, layers, ctor, call, {tuple(x.shape[2:])}
    net = make_net(1, cls=GapNet) if method == "cam" else make_net(1)
    x = make_input(1, n=N)
    layers = None if own_layers else "feat"
    if option == "forward_args":
        model = TwoInputs(net)
        layers = None if own_layers else "net.feat"
        if method == "cam":  # the extra inputs rescale the logits after the classifier: name it (input checked only)
            ctor["fc"] = "net.fc"
        call["forward_args"] = (torch.rand(N, 2, dtype=torch.float64) + 0.5,)
        call["forward_kwargs"] = {"temperature": 2.0}
    else:
        model = net
    if option in ("eigen_smooth", "aug_smooth", "per_sample"):
        ctor[option] = True
    elif option in ("upsample", "normalize"):
        call[option] = False
    shapes = {tuple(x.shape[2:])}
    if option == "upsample":
        with torch.no_grad():
            shapes.add(tuple(net.feat(net.conv2(net.conv1(x))).shape[2:]))
    del cls
    return model, x, layers, ctor, call, shapes


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("method", METHODS)
def test_option_works_or_is_refused_before_the_forward(method, option):
    cls = ndcam.get_method(method)
    model, x, layers, ctor, call, shapes = _case(method, option)
    calls = _counting(model)
    targets = [0, 1]
    if method == "cam" and option == "reshape":
        # not about the option: this token model's head reads the class token, so there is no global average for
        # CAM's class rows to weight -- CAM must refuse (LayerError), not return a map
        with pytest.raises(ndcam.LayerError, match="global average"):
            cls(model, layers, **ctor).explain(x, targets, **call)
        return
    if option in cls.unsupported:
        with pytest.raises(ndcam.NdcamError) as info:
            cls(model, layers, **ctor).explain(x, targets, **call)
        text = str(info.value)
        assert option.split("_")[0] in text or OPTIONS[option] in text, text
        assert cls.unsupported[option] in text
        assert calls == [], f"{method} ran the model {len(calls)} time(s) before refusing {option}"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ndcam.ConstantMapWarning)
        exp = cls(model, layers, **ctor).explain(x, targets, **call)
    assert calls, "the model never ran"
    assert exp.maps.shape[0] == N and tuple(exp.maps.shape[1:]) in shapes, (tuple(exp.maps.shape), shapes)
    assert exp.maps.dtype == torch.float32 and bool(torch.isfinite(exp.maps).all())
    _check_honoured(cls, method, option, model, x, layers, ctor, call, exp)
    if option == "normalize":  # raw maps: the recorded range is the map's own
        torch.testing.assert_close(exp.raw_max, exp.maps.flatten(1).amax(1))
    elif not (exp.maps == 0).all():
        assert float(exp.maps.max()) <= 1.0 and float(exp.maps.min()) >= 0.0


def _check_honoured(cls, method, option, model, x, layers, ctor, call, exp):
    """The option changed what it should: per_sample gives the batch's maps (eval mode, no batch statistics),
    eigen/aug smoothing and extra inputs change the maps (not silently dropped).
    """
    base_ctor = {k: v for k, v in ctor.items() if k != option}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ndcam.ConstantMapWarning)
        if option == "per_sample":
            torch.testing.assert_close(exp.maps, cls(model, layers, **base_ctor).explain(x, [0, 1]).maps,
                                       atol=1e-5, rtol=1e-4)
        elif option == "eigen_smooth" and method in PRINCIPAL:
            torch.testing.assert_close(exp.maps, cls(model, layers, **base_ctor).explain(x, [0, 1]).maps,
                                       atol=1e-5, rtol=1e-4)
        elif option in ("eigen_smooth", "aug_smooth"):
            plain = cls(model, layers, **base_ctor).explain(x, [0, 1])
            assert not torch.allclose(exp.maps, plain.maps), f"{method} ignored {option}"
        elif option == "forward_args":
            other = {"forward_args": (call["forward_args"][0] * 0 + 1,), "forward_kwargs": {"temperature": 1.0}}
            plain = cls(model, layers, **ctor).explain(x, [0, 1], **other)
            assert not torch.allclose(exp.scores, plain.scores), f"{method} ignored the extra inputs"


def test_every_declared_unsupported_option_is_a_known_option_with_a_reason():
    for name in METHODS:
        cls = ndcam.get_method(name)
        assert set(cls.unsupported) <= set(OPTIONS), (name, set(cls.unsupported) - set(OPTIONS))
        assert all(isinstance(why, str) and why for why in cls.unsupported.values())


def test_guided_gradcam_honours_the_options_it_used_to_drop():
    model, x = make_net(1), make_input(1, n=N)
    plain = ndcam.GuidedGradCAM(model, "feat")(x, 1)
    guided = ndcam.GuidedBackprop(model)(x, 1, normalize=False)
    for opts in ({"eigen_smooth": True}, {"aug_smooth": True}):
        got = ndcam.GuidedGradCAM(model, "feat", **opts)(x, 1)
        cam = ndcam.GradCAM(model, "feat", **opts)(x, 1, normalize=False)
        gb = ndcam.GuidedBackprop(model, **{k: v for k, v in opts.items() if k != "eigen_smooth"})(x, 1,
                                                                                                 normalize=False)
        want = ndcam.ops.minmax_normalize((gb.double() * cam.double()), batch_dims=1).float()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(got, plain)
    assert guided.shape == plain.shape
    with pytest.raises(ndcam.InputError, match="upsample=False"):
        ndcam.GuidedGradCAM(model, "feat")(x, 1, upsample=False)


# -- adding a method touches one file --------------------------------------------------------------------------------


@pytest.fixture
def toy_method():
    """Register a toy method for the test and remove it afterwards (the registry is global)."""
    from ndcam.methods.base import BaseCAM, register

    before = dict(REGISTRY)

    @register("toymethod")
    class ToyMethod(BaseCAM):
        """Channel weights = the channels' mean activation (class-agnostic; a test double)."""

        uses_gradients = False

        def weights(self, activations, gradients, classes):
            return ndcam.ops.spatial_mean(activations)

    try:
        yield ToyMethod
    finally:
        REGISTRY.clear()
        REGISTRY.update(before)


def test_a_method_defined_in_one_place_is_available_everywhere(toy_method, rank, capsys):
    assert "toymethod" in ndcam.methods()
    assert ndcam.get_method("toymethod") is toy_method
    model, x = make_net(rank), make_input(rank)
    exp = ndcam.explain(model, x, method="toymethod", layers="feat", targets=[0, 1, 2])
    assert exp.maps.shape == x.shape[:1] + x.shape[2:] and torch.isfinite(exp.maps).all()
    raw = ndcam.explain(model, x, method="toymethod", layers="feat", upsample=False, normalize=False).maps
    a = {}
    h = model.feat.register_forward_hook(lambda m, i, o: a.setdefault("a", o.detach()))
    model(x)
    h.remove()
    want = torch.relu(ndcam.ops.weighted_sum(ndcam.ops.spatial_mean(a["a"]), a["a"]))
    torch.testing.assert_close(raw, want.float())
    assert ndcam.app.cli.main(["methods"]) == 0
    assert "toymethod" in capsys.readouterr().out.split()


def test_the_toy_method_is_gone_after_the_fixture():
    assert "toymethod" not in ndcam.methods()


@pytest.mark.parametrize("method", METHODS)
def test_cli_gives_perturbation_options_to_the_perturbative_classes(method):
    cls = ndcam.get_method(method)
    args = type("Args", (), {"batch_size": 4})()
    opts = ndcam.app.cli._method_options(cls, args)
    if cls.perturbative:
        assert opts["batch_size"] == 4 and "progress" in opts
        cls(make_net(1), "feat", **opts)  # the class takes them
    else:
        assert "batch_size" not in opts
    assert {"scorecam", "ablationcam", "sscam", "iscam"} <= {m for m in METHODS if ndcam.get_method(m).perturbative}
