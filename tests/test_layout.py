"""The package's folders are its architecture, and the public short names are its homes.

Layers: ``core`` (the engine) <- ``analysis`` (built on it) and ``synthetic`` (the demo's tasks) <- ``app`` (files,
pictures, reports, the command line). A module may import, at module level, only its own layer and the layers below
it; ``plot``/``report`` conveniences on result objects may reach ``app`` inside the function that draws. The core
and analysis never import matplotlib or a file-format library at module level, so ``import ndcam.core`` works
with torch, numpy, scipy and einops alone.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys

import pytest

import ndcam
from ndcam import _layout

PKG = pathlib.Path(ndcam.__file__).parent
LAYERS = {"core": set(), "synthetic": {"core"}, "analysis": {"core"}, "app": {"core", "analysis", "synthetic"}}
DRAWING_OR_FILES = {"matplotlib", "PIL", "soundfile", "nibabel", "pydicom", "wfdb", "zarr"}


def _module_level_imports(path: pathlib.Path, package: str) -> list[tuple[str, int]]:
    """Absolute names imported at module level (not inside functions/methods), with line numbers."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, int]] = []
    body = list(tree.body)
    while body:  # module level, including if/try blocks, but not def/class bodies' functions
        node = body.pop()
        if isinstance(node, (ast.If, ast.Try)):
            body.extend(node.body + node.orelse + getattr(node, "finalbody", []))
            for h in getattr(node, "handlers", []):
                body.extend(h.body)
        elif isinstance(node, ast.ClassDef):
            body.extend(n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out += [(f"{mod}.{a.name}" if node.module is None else mod, node.lineno) for a in node.names]
            else:
                out.append((node.module or "", node.lineno))
    return out


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        yield name, package, path


def test_every_module_lives_in_a_layer():
    loose = [name for name, _, _ in _modules() if name.count(".") >= 1 and name.split(".")[1] not in LAYERS
             and name not in ("ndcam.__main__", "ndcam._layout", "ndcam._version")]
    assert not loose, f"modules outside core/analysis/app/synthetic: {loose}"


def test_module_level_imports_only_go_down():
    wrong = []
    for name, package, path in _modules():
        if name.count(".") < 1 or name.split(".")[1] not in LAYERS:
            continue
        layer = name.split(".")[1]
        allowed = LAYERS[layer] | {layer}
        for imported, line in _module_level_imports(path, package):
            top = imported.split(".")[0]
            if top == "ndcam":
                parts = imported.split(".")
                if len(parts) < 2 or parts[1] not in allowed:
                    wrong.append(f"{path.relative_to(PKG.parent)}:{line} ({layer}) imports {imported}")
            elif layer in ("core", "analysis") and top in DRAWING_OR_FILES:
                wrong.append(f"{path.relative_to(PKG.parent)}:{line} ({layer}) imports {imported} at module level")
    assert not wrong, "\n".join(wrong)


def test_import_ndcam_needs_only_the_core_dependencies():
    """``import ndcam`` imports every public module (``_layout.register``), so no module may import an optional
    library (Pillow, soundfile, nibabel, pydicom, wfdb, zarr, pypng, ...) at module level: only the standard library and
    the dependencies pyproject.toml declares."""
    import tomllib

    declared = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    allowed = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in declared} | set(sys.stdlib_module_names)
    wrong = []
    for _name, package, path in _modules():
        for imported, line in _module_level_imports(path, package):
            top = imported.split(".")[0]
            if top and top != "ndcam" and top not in allowed:
                wrong.append(f"{path.relative_to(PKG.parent)}:{line} imports {imported} at module level")
    assert not wrong, "\n".join(wrong)


def test_the_layer_rule_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom ..app import viz\n\ndef f():\n    from ..app import report\n")
    assert sorted(_module_level_imports(bad, "ndcam.core")) == [("ndcam.app", 2), ("os", 1)]


@pytest.mark.parametrize("short, home", sorted(_layout.PUBLIC_MODULES.items()))
def test_public_short_names_are_their_homes(short, home):
    module = importlib.import_module(f"ndcam.{home}")
    assert importlib.import_module(f"ndcam.{short}") is module
    if short not in ("explain", "methods"):  # those names are the functions ndcam.explain / ndcam.methods
        assert getattr(ndcam, short) is module
    for sub in getattr(module, "__path__", []) and [p.stem for p in pathlib.Path(module.__path__[0]).glob("*.py")]:
        if sub != "__init__":
            assert importlib.import_module(f"ndcam.{short}.{sub}") is importlib.import_module(f"ndcam.{home}.{sub}")


def test_no_module_is_loaded_twice():
    """Every file of the package is one module object, whichever name imported it."""
    import ndcam.viz.ecg  # noqa: F401 -- an old deep path
    from ndcam.methods.base import BaseCAM

    assert BaseCAM is ndcam.BaseCAM
    files: dict[str, set[int]] = {}
    for name, mod in list(sys.modules.items()):
        if name.startswith("ndcam") and getattr(mod, "__file__", None):
            files.setdefault(mod.__file__, set()).add(id(mod))
    assert all(len(ids) == 1 for ids in files.values())



def _stub_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_public_stubs", PKG.parent / "scripts" / "make_public_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_type_checkers_get_a_stub_for_every_short_name():
    """``ndcam/<name>.pyi`` re-exports each home (``python scripts/make_public_stubs.py`` rewrites them)."""
    stubs = _stub_module()
    for short, home in _layout.PUBLIC_MODULES.items():
        path = PKG / f"{short}.pyi"
        if short in _layout.STUBLESS:
            assert not path.exists(), f"{path.name}: ndcam.{short} is a function for type checkers too"
            continue
        assert path.exists() and path.read_text() == stubs.stub_text(short, home), (
            f"{path.name} is missing or stale: run python scripts/make_public_stubs.py")
    extra = {p.stem for p in PKG.glob("*.pyi")} - set(_layout.PUBLIC_MODULES)
    assert not extra, f"stubs without a public short name: {sorted(extra)}"


@pytest.mark.slow
def test_mypy_follows_the_short_names_in_user_code(tmp_path):
    """A user's ``from ndcam.viz import plot_signal`` type-checks, and mypy sees the real signatures through it."""
    pytest.importorskip("mypy")
    import subprocess

    site = tmp_path / "site"
    site.mkdir()
    (site / "ndcam").symlink_to(PKG, target_is_directory=True)
    user = tmp_path / "user.py"
    user.write_text(
        "import ndcam\nimport ndcam.metrics\nfrom ndcam.targets import ClassTarget\nfrom ndcam.viz import plot_signal\n"
        "from ndcam.report import html_report\n\n"
        "t = ClassTarget(3)\nf = plot_signal\nh = html_report\nm = ndcam.metrics.deletion_auc\ng = ndcam.GradCAM\n"
        "d = (ndcam.data.task, ndcam.models.ecg_net, ndcam.io.load_input, ndcam.report.table, ndcam.capture.model_lock)\n"
        "wrong: int = ndcam.viz.overlay\nalso_wrong: int = plot_signal\n"
    )
    env = {**__import__("os").environ, "MYPYPATH": str(site)}
    res = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent",
                          "--no-incremental", "--config-file", "/dev/null", str(user)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    lines = [ln for ln in res.stdout.splitlines() if ": error:" in ln]
    assert [ln.split(":")[1] for ln in lines] == ["13", "14"], res.stdout  # only the two wrong lines
    assert "ndarray" in lines[0] and "def plot_signal" in lines[1], res.stdout  # the real signatures
