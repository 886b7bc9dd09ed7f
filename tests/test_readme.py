"""The documentation runs: every ```python block of README.md and docs/DESIGN.md, the README's cheap shell commands,
and every ``ndcam.`` name and repository path the two pages mention.

How a snippet is run. Users copy a block and supply what its text assumes they have (``model``, ``x``, a file). The
table :data:`PYTHON` says, for every block, what that is: a *setup* builds exactly those names -- tiny models from
``ndcam.models``/``ndcam.data`` and inputs of the right rank, files written into the test's folder -- and nothing else
besides ``torch`` and ``ndcam`` (:data:`IMPORTED`: what each page's first block imports), so a name the block uses
without defining it, and the reader is not told to have, fails the test. Each block (or part) starts from its own
setup rather than from what an earlier block left: what it takes over (the ``exp`` of the Use section in the Pictures
block) is spelled out in the setup. The block then runs unchanged (compiled with the page's own line numbers, so a
traceback shows the page's line) in that folder, with ndcam's warnings (constant maps, batch dependence, precision)
turned into errors: the models are random but seeded, with seeds whose maps all have content, so a
``ConstantMapWarning`` here means the snippet or the library changed. A *check* asserts what the block's comments
promise (shapes, dtypes, names). Blocks whose lines are alternatives for different inputs (one line per view, one
per analysis) are cut into *parts*, each with its own setup, each starting at the line that keys it.

The table is keyed by (page, first line of the block), so:

- a new block without an entry fails :func:`test_every_block_has_an_entry`, naming the page, the line and the key to
  add; an entry whose block is gone or whose first line changed fails :func:`test_no_entry_without_a_block`;
- a block is skipped only for what a test cannot have (a MIT-BIH record, ``torchrun``, a GPU, network installs), with
  the reason in the entry.

The shell blocks' commands are keyed by their text in :data:`SHELL` the same way; the cheap ones run in-process
through ``ndcam.app.cli.main`` on files and models the setup writes (``python -m ndcam`` once in a subprocess);
long ones (the demo, the test suite, installs) are skipped with the reason. Every ``--flag`` the pages name must be
an option of an ``ndcam`` subcommand.

Names and paths: every dotted ``ndcam.x.y`` in the pages' code (and, in inline code, ``ops.wide``-style names of the
public modules and ``Explanation.warnings``-style attributes of exported classes) must import or resolve as an
attribute; every linked file and every ``examples/...``-style path in inline code must exist; every view in the
table under "Pictures: `ndcam.viz`" must be in ``ndcam.viz``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np
import pytest
import torch
from torch import nn

import ndcam
from ndcam import _layout
from ndcam.app import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/DESIGN.md")

# --------------------------------------------------------------------------------------------------------------------
# reading the pages


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    lang: str
    line: int  # 1-based line of the block's first code line
    code: str
    section: str  # the heading it is under

    @property
    def key(self) -> str:
        """The block's stable identifier: its first non-blank line (see :func:`line_key`)."""
        return next(line_key(ln) for ln in self.code.splitlines() if ln.strip())


def line_key(line: str) -> str:
    """A line's identifier: stripped, without a trailing comment (comments get reworded more often than code)."""
    line = line.strip()
    return line if line.startswith("#") else re.sub(r"\s+#.*$", "", line)


def blocks(page: str, lang: str | None = None) -> list[Block]:
    """The fenced blocks of ``page`` (of language ``lang`` when given), in page order."""
    out: list[Block] = []
    section, fence, start, buf = "", None, 0, []
    for i, line in enumerate((ROOT / page).read_text().splitlines(), 1):
        if fence is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            elif line.startswith("```"):
                fence, start, buf = line[3:].strip(), i + 1, []
        elif line.startswith("```"):
            out.append(Block(page, fence, start, "\n".join(buf) + "\n", section))
            fence = None
        else:
            buf.append(line)
    assert fence is None, f"{page}: a code block opened at line {start - 1} is never closed"
    return [b for b in out if lang is None or b.lang == lang]


def prose(page: str) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^```.*?^```[ \t]*$", "", (ROOT / page).read_text(), flags=re.S | re.M)


# --------------------------------------------------------------------------------------------------------------------
# what a reader is expected to have: tiny models and inputs of every rank, and files


def _seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build().eval()


def image_resnet() -> dict[str, Any]:
    """``model``: a ResNet with torchvision's names (``layer1``..``layer4``, 10 classes) and ``x``: 2 RGB 64x64 images."""
    model = _seeded(lambda: ndcam.models.ResNet(2, (1, 1, 1, 1), in_channels=3, num_classes=10, base=16))
    return {"model": model, "x": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))}


def image_vgg() -> dict[str, Any]:
    """``model``: a VGG-style net (``features.<i>``, 10 classes) and ``x``: 2 RGB 32x32 images."""
    model = _seeded(lambda: ndcam.models.vgg_like(2, in_channels=3, num_classes=10))
    return {"model": model, "x": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))}


def ecg_beats(leads: int = 1, n: int = 4) -> dict[str, Any]:
    """``model``: a tiny 1D net (2 classes: normal, PVC); ``x``/``ecg``: ``n`` synthetic beat trains ``(n, leads, 720)``
    at 360 Hz; ``masks``: where the abnormal beat is; ``targets``: the labels."""
    x, y, mask = ndcam.data.ecg_task(n=n, seed=0)
    x = x.repeat(1, leads, 1) * torch.linspace(1.0, 0.5, leads)[:, None]
    model = _seeded(lambda: ndcam.data.TinyNet(1, in_channels=leads, num_classes=2, kernel=7))
    return {"model": model, "x": x, "ecg": x, "masks": mask, "targets": y}


def explained(names: dict[str, Any], x: str = "x", **kwargs: Any) -> dict[str, Any]:
    """``names`` plus ``exp``: ``ndcam.explain(model, <x>)`` (Grad-CAM, top-1 class)."""
    return {**names, "exp": ndcam.explain(names["model"], names[x], **kwargs)}


def tiny(rank: int, channels: int, classes: int = 2, seed: int = 0) -> nn.Module:
    """A seeded :class:`ndcam.data.TinyNet` of ``rank``."""
    return _seeded(lambda: ndcam.data.TinyNet(rank, in_channels=channels, num_classes=classes), seed)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------------------------------
# the table of python blocks


Setup = Callable[[Path], dict[str, Any]]
Check = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class Run:
    """Run a block (or a part of one) after ``setup(folder)`` gave the names a reader has; then ``check`` the names."""

    setup: Setup
    check: Check | None = None
    slow: bool = False
    skip: str = ""  # why it cannot run in a test (external resources only)


#: a block whose lines are alternatives: cut before each keyed line (the first key is the block's first line); each
#: part runs on its own setup
Parts = dict[str, Run]
Entry = Union[Run, Parts]


def _check_use(ns: dict[str, Any]) -> None:
    # "maps (N, *spatial), float32 in [0, 1]" (the explanation's); "(N, 2, *spatial): K=2 from ONE forward"
    x, exp = ns["x"], ns["exp"]
    assert exp.maps.shape == (len(x), *x.shape[2:]) and exp.maps.dtype == torch.float32
    assert float(exp.maps.min()) >= 0 and float(exp.maps.max()) == 1
    assert [type(v).__name__ for v in (exp.scores, exp.raw_min, exp.raw_max)] == ["Tensor"] * 3
    assert ns["maps"].shape == (len(x), 2, *x.shape[2:]) and ns["maps"].dtype == torch.float32


def _check_sweep(ns: dict[str, Any]) -> None:
    x, sweep = ns["x"], ns["sweep"]
    assert sweep.names == ["layer1", "layer2", "layer3", "layer4"]
    assert sweep.maps.shape == (len(x), 4, *x.shape[2:])


def _check_channels(ns: dict[str, Any]) -> None:
    res = ns["res"]
    assert res.channels.shape == res.weights.shape == (len(ns["x"]), 8)


def _check_leads(ns: dict[str, Any]) -> None:
    ecg, exp = ns["ecg"], ns["exp"]
    assert exp.maps.shape == ecg.shape  # (N, leads, L)
    assert torch.allclose(exp.lead_energy().sum(1), torch.ones(len(ecg)))


def _check_overlay(ns: dict[str, Any]) -> None:
    assert ns["rgb"].shape == (*ns["image"].shape[:2], 3) and ns["rgb"].dtype == np.uint8


def _check_metrics(ns: dict[str, Any]) -> None:
    m, model, x, maps, targets = ns["metrics"], ns["model"], ns["x"], ns["maps"], ns["targets"]
    n = len(x)
    assert m.deletion_auc(model, x, maps, targets).shape == (n,)  # "(N,) tensor"
    assert isinstance(m.average_drop(model, x, maps, targets), float)  # "scalar %"
    hits = m.pointing_game(maps, ns["masks"])
    assert hits.shape == (n,) and hits.dtype == torch.bool  # "(N,) bool hits"


def _resnet(tmp: Path) -> dict[str, Any]:
    """``model`` and ``x``: :func:`image_resnet`."""
    return image_resnet()


def _vgg(tmp: Path) -> dict[str, Any]:
    """``model`` and ``x``: :func:`image_vgg`."""
    return image_vgg()


def _one_lead(tmp: Path) -> dict[str, Any]:
    """``exp``: Grad-CAM of a 1-lead beat classifier on ``x`` (:func:`ecg_beats`), classes normal and PVC."""
    return explained(ecg_beats())


def _two_leads(tmp: Path) -> dict[str, Any]:
    """``exp`` of a 2-lead (MLII, V1) beat classifier on ``x``; for explain_leads also ``ecg`` (the same signal)."""
    return explained(ecg_beats(leads=2))


def _evaluated(tmp: Path) -> dict[str, Any]:
    """For the metrics: ``model``, ``x`` (:func:`ecg_beats`), ``targets`` (the labels), ``maps`` (their Grad-CAM),
    ``masks`` (where the abnormal beat is) and, for DESIGN's placeholder, ``method_cls``: ``ndcam.GradCAM``."""
    names = ecg_beats(n=4)
    maps = ndcam.explain(names["model"], names["x"], targets=names["targets"]).maps
    return {**names, "maps": maps, "method_cls": ndcam.GradCAM}


def _dataset_setup(tmp: Path) -> dict[str, Any]:
    """``model``: a tiny 1D beat classifier; ``dataset``: 20 beat trains as dicts with ``x``, ``y`` and ``mask``."""
    pytest.importorskip("zarr")
    names = ecg_beats(n=20)
    x, y, mask = names["x"], names["targets"], names["masks"]
    dataset = [{"x": x[i], "y": int(y[i]), "mask": mask[i]} for i in range(len(x))]
    return {"model": names["model"], "dataset": dataset}


def _check_dataset(ns: dict[str, Any]) -> None:
    ex = ns["ex"]
    assert bool(ex.done.all()) and ex.maps[17].shape == (720,)  # one sample's map: (*spatial)
    assert sorted(p.name for p in Path("pictures").iterdir()) == ["sample000000.png", "sample000017.png"]


def _volume_nifti(tmp: Path) -> dict[str, Any]:
    """``exp`` of a tiny 3D net on ``vol`` (1, 1, 12, 14, 16) and ``nifti``: the nibabel image it was read from."""
    nib = pytest.importorskip("nibabel")
    vol = torch.randn(1, 1, 12, 14, 16, generator=torch.Generator().manual_seed(2))
    affine = np.diag([-1.5, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(vol[0, 0].numpy(), affine), tmp / "t1.nii.gz")
    nifti = nib.load(tmp / "t1.nii.gz")
    return explained({"model": tiny(3, 1), "vol": vol, "nifti": nifti}, x="vol")


def _spectrogram(tmp: Path) -> dict[str, Any]:
    """``exp`` of a tiny 2D net on ``spec``: a (1, 1, 64, 40) spectrogram."""
    spec = torch.rand(1, 1, 64, 40, generator=torch.Generator().manual_seed(3))
    return explained({"model": tiny(2, 1), "spec": spec}, x="spec")


def _photo(tmp: Path) -> dict[str, Any]:
    """``image``: a (60, 80, 3) uint8 photo; ``exp``: a 2D net's explanation of it resized to (30, 40)."""
    image = np.random.default_rng(4).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    x = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(30, 40))
    return explained({"model": tiny(2, 3), "image": image, "x": x})


def _twelve_leads(tmp: Path) -> dict[str, Any]:
    """``exp`` of ``ndcam.models.ecg_net`` on ``x``: one 12-lead ECG, 2 s at 500 Hz."""
    model = _seeded(lambda: ndcam.models.ecg_net(12, 5))
    return explained({"model": model, "x": torch.randn(1, 12, 1000, generator=torch.Generator().manual_seed(5))})


PYTHON: dict[tuple[str, str], Entry] = {
    ("README.md", "import torch, ndcam"): Run(_resnet, _check_use),
    ("README.md", 'fig = exp.plot(x, index=0, labels=["normal", "PVC"])'): {
        'fig = exp.plot(x, index=0, labels=["normal", "PVC"])': Run(_one_lead),
        'fig = exp.plot(x, fs=360, units="mV", channels=["MLII", "V1"], offset=1527.5)': Run(_two_leads),
        'fig = exp.plot(x, fs=500, channels=["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"])':
            Run(_twelve_leads),
        'fig = exp.plot(spec, kind="spectrogram", fs=16000)': Run(_spectrogram),
        "fig = exp.plot(vol, affine=nifti.affine)": Run(_volume_nifti),
        'rgb = ndcam.viz.overlay(image, exp.maps[0], alpha=0.5, cmap="jet")': Run(_photo, _check_overlay),
    },
    ("README.md", 'sweep = ndcam.layer_sweep(model, x, method="gradcam", layers="stages")'): {
        'sweep = ndcam.layer_sweep(model, x, method="gradcam", layers="stages")':
            Run(_resnet, _check_sweep),
        "from ndcam.channels import top_channels": Run(_vgg, _check_channels),
        "from ndcam.leadwise import explain_leads": Run(_two_leads, _check_leads),
    },
    ("README.md", "# items: a tensor (C, *spatial), (x, y), or a dict with x and optional y, mask, key, affine"):
        Run(_dataset_setup, _check_dataset),
    ("README.md", "from ndcam import metrics"): Run(_evaluated, _check_metrics),
    ("docs/DESIGN.md", "import torch, ndcam"): Run(_resnet, _check_use),
    ("docs/DESIGN.md", "from ndcam import metrics"): Run(_evaluated, _check_metrics),
}


def units() -> Iterator[tuple[Block, int, str, Run]]:
    """Every runnable unit: (block, its first line, its code, its entry) -- a whole block, or one of its parts."""
    for page in PAGES:
        for b in blocks(page, "python"):
            entry = PYTHON.get((page, b.key))
            if entry is None:
                continue
            if isinstance(entry, Run):
                yield b, b.line, b.code, entry
                continue
            lines = b.code.splitlines(keepends=True)
            starts = [i for i, ln in enumerate(lines) if ln.strip() and line_key(ln) in entry]
            assert starts and starts[0] == next(i for i, ln in enumerate(lines) if ln.strip()), (
                f"{page}:{b.line}: the first part must start at the block's first line")
            for a, z in zip(starts, [*starts[1:], len(lines)]):
                code = "\n" * a + "".join(lines[a:z])  # keeps the page's line numbers
                yield b, b.line + a, code, entry[line_key(lines[a])]


def _param(b: Block, line: int, code: str, run: Run) -> Any:
    return pytest.param(b, code, run, id=f"{b.page}:{line}", marks=[pytest.mark.slow] if run.slow else [])


def test_every_block_has_an_entry():
    missing = [f"{b.page}:{b.line} ({b.section}): add PYTHON[({b.page!r}, {b.key!r})]"
               for p in PAGES for b in blocks(p, "python") if (p, b.key) not in PYTHON]
    assert not missing, ("python blocks with no entry in tests/test_readme.py's PYTHON table (say what a reader "
                         "has before the block, or why it cannot run):\n" + "\n".join(missing))


def test_no_entry_without_a_block():
    keys = {(p, b.key): b for p in PAGES for b in blocks(p, "python")}
    stale = [k for k in PYTHON if k not in keys]
    assert not stale, f"PYTHON entries whose block is gone or has a new first line: {stale}"
    for (p, _), entry in PYTHON.items():
        if isinstance(entry, dict):
            lines = {line_key(ln) for ln in keys[(p, _)].code.splitlines()}
            assert set(entry) <= lines, f"parts of {p}:{keys[(p, _)].line} whose line is gone: {set(entry) - lines}"


@contextlib.contextmanager
def _clean_imports(folder: Path) -> Iterator[None]:
    """Undo what a snippet or command adds to ``sys.path`` and forget the modules it imported from ``folder`` (the
    user packages a setup wrote), so the next test's ``mymodels`` is its own."""
    path = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = path
        for name, mod in list(sys.modules.items()):
            if str(getattr(mod, "__file__", None) or "").startswith(str(folder)):
                del sys.modules[name]


#: what a reader has from the page's first block, ``import torch, ndcam``
IMPORTED: dict[str, dict[str, Any]] = {page: {"torch": torch, "ndcam": ndcam} for page in PAGES}


@pytest.mark.parametrize(("block", "code", "run"), [_param(*u) for u in units()])
def test_python_block_runs(block: Block, code: str, run: Run, tmp_path, monkeypatch):
    if run.skip:
        pytest.skip(run.skip)
    monkeypatch.chdir(tmp_path)
    with _clean_imports(tmp_path), warnings.catch_warnings():
        warnings.simplefilter("error", ndcam.NdcamWarning)
        ns = {**IMPORTED[block.page], **run.setup(tmp_path), "__name__": "__readme__"}
        exec(compile("\n" * (block.line - 1) + code, str(ROOT / block.page), "exec"), ns)
        if run.check is not None:
            run.check(ns)


# --------------------------------------------------------------------------------------------------------------------
# shell commands


def commands(page: str) -> list[tuple[Block, int, str]]:
    """(block, line, command) for every command of the page's bash blocks; continuation lines joined, comments cut."""
    out = []
    for b in blocks(page, "bash"):
        lines = b.code.splitlines()
        i = 0
        while i < len(lines):
            start, text = i, ""
            while True:
                ln = re.sub(r"(^|\s)#.*$", "", lines[i]).rstrip()
                i += 1
                if ln.endswith("\\"):
                    text += ln[:-1].strip() + " "
                    continue
                text += ln.strip()
                break
            if text:
                out.append((b, b.line + start, text))
    return out


@dataclasses.dataclass(frozen=True)
class Cmd:
    """Run a documented command in-process (``ndcam ...`` through ``ndcam.app.cli.main``) after ``setup(folder)``
    wrote the files and packages it names; ``check(folder, stdout)`` asserts what the page says it gives."""

    setup: Callable[[Path], None] | None = None
    check: Callable[[Path, str], None] | None = None
    slow: bool = False
    skip: str = ""


def _models_module(tmp: Path) -> None:
    """``mymodels.py`` with the factories the explain commands name: ``net`` (RGB images, 3 classes), ``brain``
    (volumes), ``kws`` (mel spectrograms)."""
    _write(tmp / "mymodels.py", (
        "import torch\nimport ndcam\n\n\n"
        "def _tiny(rank, channels, classes):\n"
        "    torch.manual_seed(0)\n"
        "    return ndcam.data.TinyNet(rank, in_channels=channels, num_classes=classes).eval()\n\n\n"
        "def net():\n    return _tiny(2, 3, 3)\n\n\n"
        "def brain():\n    return _tiny(3, 1, 2)\n\n\n"
        "def kws():\n    return _tiny(2, 1, 4)\n"))


def _photo_files(tmp: Path) -> None:
    """``photo.jpg`` (40x48 RGB), ``classes.txt`` (3 names), ``mymodels.py`` and ``net.pt`` (``net``'s weights)."""
    Image = pytest.importorskip("PIL.Image")
    _models_module(tmp)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp / "photo.jpg")
    _write(tmp / "classes.txt", "cat\ndog\nbird\n")
    with _clean_imports(tmp):
        sys.path.insert(0, str(tmp))
        torch.save(importlib.import_module("mymodels").net().state_dict(), tmp / "net.pt")


def _nifti_files(tmp: Path) -> None:
    """``t1.nii.gz`` (12x14x16, 2x2x3 mm voxels) and ``mymodels.py``."""
    nib = pytest.importorskip("nibabel")
    _models_module(tmp)
    vol = np.random.default_rng(0).standard_normal((12, 14, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 3.0, 1.0])), tmp / "t1.nii.gz")


def _wav_files(tmp: Path) -> None:
    """``speech.wav`` (1 s of 440 Hz at 8 kHz, 16-bit PCM) and ``mymodels.py``."""
    sf = pytest.importorskip("soundfile")
    _models_module(tmp)
    t = np.arange(8000) / 8000
    sf.write(tmp / "speech.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000, subtype="PCM_16")


def _factory_module(tmp: Path) -> None:
    """``pkg/mod.py`` with ``factory``: the 12-lead ``ndcam.models.ecg_net``."""
    _write(tmp / "pkg" / "__init__.py", "")
    _write(tmp / "pkg" / "mod.py", "import ndcam\n\n\ndef factory():\n    return ndcam.models.ecg_net(12, 5)\n")


def _mypkg(tmp: Path) -> None:
    """``mypkg.nets:ecg_net`` (a tiny 1D net, weights in ``ecg.pt``) and ``mypkg.data:beats`` (20 beat trains with
    their masks, as dicts)."""
    pytest.importorskip("zarr")
    _write(tmp / "mypkg" / "__init__.py", "")
    _write(tmp / "mypkg" / "nets.py", (
        "import torch\nimport ndcam\n\n\ndef ecg_net():\n    torch.manual_seed(0)\n"
        "    return ndcam.data.TinyNet(1, in_channels=1, num_classes=2, kernel=7).eval()\n"))
    _write(tmp / "mypkg" / "data.py", (
        "import ndcam\n\n\ndef beats():\n    x, y, mask = ndcam.data.ecg_task(n=20, seed=0)\n"
        "    return [{'x': x[i], 'y': int(y[i]), 'mask': mask[i]} for i in range(len(x))]\n"))
    with _clean_imports(tmp):
        sys.path.insert(0, str(tmp))
        torch.save(importlib.import_module("mypkg.nets").ecg_net().state_dict(), tmp / "ecg.pt")


_EXPLAIN_DATASET = ("ndcam explain-dataset --model mypkg.nets:ecg_net --weights ecg.pt --dataset mypkg.data:beats "
                    "--out beats.store --method gradcam --batch-size 64 --metrics pointing,deletion")


def _store(tmp: Path) -> None:
    """What the command before it left: ``mypkg`` and the store ``beats.store``."""
    _mypkg(tmp)
    assert _cli(_EXPLAIN_DATASET)[0] == 0


def _check_explain(*files: str) -> Callable[[Path, str], None]:
    def check(tmp: Path, out: str) -> None:
        for f in files:
            assert (tmp / f).is_file(), f"{f} not written; the folder holds {sorted(p.name for p in tmp.rglob('*'))}"

    return check


def _check_methods(tmp: Path, out: str) -> None:
    assert out.split() == list(ndcam.methods())


def _check_layers(tmp: Path, out: str) -> None:
    # every module in execution order with its output shape, the usable ones marked
    assert re.search(r"^\* layer4 +Sequential +1x1024x157$", out, re.M) and re.search(r"^  fc +Linear +1x5$", out, re.M), out


_LONG = "the main job (trains three models, minutes); tests/test_cli.py runs `ndcam demo --quick`"
_NET = "installs packages (network)"

SHELL: dict[tuple[str, str], Cmd] = {
    ("README.md", "pip install ."): Cmd(skip=_NET),
    ("README.md", 'pip install ".[formats]"'): Cmd(skip=_NET),
    ("README.md", 'pip install ".[store]"'): Cmd(skip=_NET),
    ("README.md", "bash dev.sh demo"): Cmd(skip=_LONG),
    ("README.md", "bash dev.sh test"): Cmd(skip="runs this test suite"),
    ("README.md", "ndcam demo --out ndcam-demo [--quick]"): Cmd(skip=_LONG),
    ("README.md", "ndcam explain --model mymodels:net --weights net.pt --input photo.jpg --labels classes.txt --out out/"):
        Cmd(_photo_files, _check_explain("out/maps.npy", "out/sample0.png", "out/scores.json", "out/report.html")),
    ("README.md", "ndcam explain --model ecg.pt2 --input /data/mitdb/208.hea --annotations atr --around V --window 2 "
                  "--leads MLII"): Cmd(skip="needs MIT-BIH record 208 (PhysioNet) and the user's exported model; "
                                           "tests/test_io_records.py and examples/ecg_mitdb.py cover WFDB input"),
    ("README.md", "ndcam explain --model mymodels:brain --input t1.nii.gz --method gradcam++ --out out/"):
        Cmd(_nifti_files, _check_explain("out/maps.nii.gz", "out/maps.npy")),
    ("README.md", "ndcam explain --model mymodels:kws --input speech.wav --resample 16000 --spectrogram mel --n-mels 64"):
        Cmd(_wav_files, _check_explain("ndcam-out/maps.npy", "ndcam-out/report.html")),
    ("README.md", "ndcam layers --model pkg.mod:factory --shape 1,12,5000"): Cmd(_factory_module, _check_layers),
    ("README.md", "ndcam methods"): Cmd(check=_check_methods),
    ("README.md", _EXPLAIN_DATASET): Cmd(_mypkg, _check_explain("beats.store/settings.json")),
    ("README.md", "torchrun --nproc_per_node 4 --max-restarts 3 -m ndcam explain-dataset ..."):
        Cmd(skip="torchrun with 4 processes; tests/test_dataset_distributed.py runs explain-dataset under torchrun"),
    ("README.md", "ndcam summarize beats.store --dataset mypkg.data:beats --export 0,17"):
        Cmd(_store, _check_explain("beats.store/summary.html", "beats.store/export/sample000017.png")),
}


def _cli(command: str) -> tuple[int, str, str]:
    argv = shlex.split(command)
    assert argv[0] == "ndcam", f"not an ndcam command: {command}"
    out, err = io.StringIO(), io.StringIO()
    with _clean_imports(Path.cwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv[1:])
    return rc, out.getvalue(), err.getvalue()


def test_every_command_has_an_entry():
    found = {(p, cmd) for p in PAGES for _, _, cmd in commands(p)}
    missing = sorted(found - set(SHELL))
    assert not missing, "shell commands with no entry in tests/test_readme.py's SHELL table:\n" + "\n".join(
        f"SHELL[({p!r}, {c!r})]" for p, c in missing)
    assert not set(SHELL) - found, f"SHELL entries whose command is gone: {sorted(set(SHELL) - found)}"


@pytest.mark.parametrize(("command", "cmd"), [
    pytest.param(c, SHELL[(p, c)], id=f"{p}:{line}", marks=[pytest.mark.slow] if SHELL.get((p, c), Cmd()).slow else [])
    for p in PAGES for _, line, c in commands(p) if (p, c) in SHELL])
def test_command_runs(command: str, cmd: Cmd, tmp_path, monkeypatch):
    if cmd.skip:
        pytest.skip(cmd.skip)
    monkeypatch.chdir(tmp_path)
    if cmd.setup is not None:
        cmd.setup(tmp_path)
    rc, out, err = _cli(command)
    assert rc == 0, f"`{command}` exited {rc}: {err[-2000:]}"
    assert "Warning" not in err, err  # the warnings the command line reports on stderr (constant maps, precision)
    if cmd.check is not None:
        cmd.check(tmp_path, out)


def test_console_script_is_the_cli_main():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^ndcam = "ndcam\.app\.cli:main"$', text, re.M), "the `ndcam` command the README runs"


_NOT_NDCAM = {"--no-deps", "--nproc_per_node", "--max-restarts"}  # pip's and torchrun's


def test_every_documented_flag_exists():
    """Every ``--flag`` the pages name is an option of some ``ndcam`` subcommand (pip's and torchrun's aside)."""
    helps = []
    for sub in ([], ["demo"], ["explain"], ["methods"], ["layers"], ["explain-dataset"], ["summarize"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli.main([*sub, "--help"])
        helps.append(out.getvalue())
    options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", "\n".join(helps)))
    named = {f for p in PAGES for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", (ROOT / p).read_text())}
    assert len(named) > 30 and "--volume-index" in options
    unknown = named - options - _NOT_NDCAM
    assert not unknown, f"flags the pages name that no ndcam command has: {sorted(unknown)}"


def test_every_view_in_the_pictures_table_exists():
    """The first column of the tables under a heading that names a module (``### Pictures: `ndcam.viz```)."""
    checked = 0
    for page in PAGES:
        module = None
        for line in (ROOT / page).read_text().splitlines():
            if line.startswith("#"):
                m = re.search(r"`(ndcam\.\w+)`", line)
                module = resolve(m.group(1)) if m else None
                module = module if isinstance(module, types.ModuleType) else None
            elif module is not None and line.startswith("| `"):
                for name in re.findall(r"`(\w+)`", line.split("|")[1]):
                    assert hasattr(module, name), f"{page}: {module.__name__} has no {name}"
                    checked += 1
    assert checked >= 9


def test_python_m_ndcam_runs(tmp_path):
    """``python -m ndcam`` (the README's alternative to the installed command) in a fresh interpreter."""
    res = subprocess.run([sys.executable, "-m", "ndcam", "--help"], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    for sub in ("demo", "explain", "methods", "layers", "explain-dataset", "summarize"):
        assert sub in res.stdout


# --------------------------------------------------------------------------------------------------------------------
# names and paths the pages mention


_FILE = re.compile(r"\.(html|json|py|pyi|md|png|npy|npz|pt2?|gz|nii|dcm|hea|wav|store|txt|jpg|toml|sh)$")
_SHORT = "|".join(sorted(_layout.PUBLIC_MODULES, key=len, reverse=True))
_CLASSES = "|".join(n for n in ndcam.__all__ if n[:1].isupper())


def inline_code(page: str) -> list[str]:
    """The page's inline code spans (outside fenced blocks; a span may wrap onto the next line)."""
    spans = re.findall(r"`([^`]+)`", prose(page))
    assert not [s for s in spans if "\n\n" in s], f"{page}: an unclosed ` pairs spans across paragraphs"
    return spans


def mentioned_names(page: str) -> set[str]:
    """Dotted names the page mentions: ``ndcam.x.y`` anywhere in inline code or code blocks; in inline code also a
    public module's short name (``ops.wide``) or an exported class (``Explanation.warnings``) with an attribute."""
    text = (ROOT / page).read_text()
    code = [b.code for b in blocks(page, "python")]
    spans = inline_code(page)
    names = {m for s in [*spans, *code] for m in re.findall(r"(?<![\w./-])ndcam(?:\.[A-Za-z_]\w*)+", s)}
    for s in spans:
        for m in re.findall(rf"(?<![\w./<-])(?:{_SHORT}|{_CLASSES})(?:\.[A-Za-z_]\w*)+", s):
            if not _FILE.search(m):
                names.add(m if m.startswith("ndcam.") else f"ndcam.{m}")
    assert text  # the page exists
    return {n for n in names if not _FILE.search(n)}


def resolve(dotted: str) -> object:
    """Import the longest importable module prefix of ``dotted``, then get the rest as attributes (a dataclass's
    field counts as an attribute of its class)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError:
            continue
    for p in parts[i:]:
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and p in {f.name for f in dataclasses.fields(obj)}:
            obj = None
            continue
        obj = getattr(obj, p)
    return obj


@pytest.mark.parametrize("page", PAGES)
def test_every_mentioned_name_resolves(page):
    names = mentioned_names(page)
    assert len(names) > 10, names  # the scan finds them
    broken = []
    for n in sorted(names):
        try:
            resolve(n)
        except (AttributeError, ImportError) as err:
            broken.append(f"{n}: {type(err).__name__}: {err}")
    assert not broken, f"{page} names what does not exist:\n" + "\n".join(broken)


def test_the_name_check_can_fail():
    with pytest.raises(AttributeError):
        resolve("ndcam.viz.plot_nothing")
    with pytest.raises(AttributeError):
        resolve("ndcam.methods.base.NO_SUCH_THING")
    assert resolve("ndcam.methods.base.OPTIONS") is importlib.import_module("ndcam.core.methods.base").OPTIONS
    assert resolve("ndcam.Explanation.warnings") is None  # a dataclass field


_TOP = ("docs/", "examples/", "benchmarks/", "scripts/", "tests/", "ndcam/")


@pytest.mark.parametrize("page", PAGES)
def test_every_mentioned_path_exists(page):
    text = prose(page)
    paths = set(re.findall(r"\]\(([^)#\s]+)\)", text))  # links and images
    for span in inline_code(page):
        paths |= {t for t in span.split() if t.startswith(_TOP) and "<" not in t}
    base = (ROOT / page).parent
    missing = sorted(p for p in paths if not p.startswith("http")
                     and not ((base / p).exists() or (ROOT / p).exists()))
    assert not missing, f"{page} links or names files that do not exist: {missing}"
