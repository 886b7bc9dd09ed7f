"""Write ``ndcam/<name>.pyi`` for every short public module name of ``ndcam/_layout.py``.

At run time ``ndcam.viz`` *is* ``ndcam.app.viz`` (the alias is registered in ``sys.modules``), but type checkers find
modules by their files; each stub tells them the short name re-exports its home. ``tests/test_layout.py`` checks the
stubs are current and that mypy accepts user code importing by the short names.

    python scripts/make_public_stubs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ndcam._layout import PUBLIC_MODULES, STUBLESS  # noqa: E402


def stub_text(short: str, home: str) -> str:
    """The stub of ``ndcam.<short>``: a star re-export of its home and the home's ``__all__``."""
    path = "ndcam/" + home.replace(".", "/")
    return (f"# ndcam.{short} for type checkers: at run time it is the module {path} (see ndcam/_layout.py).\n"
            f"# Written by scripts/make_public_stubs.py.\n"
            f"from .{home} import *  # noqa: F403\n"
            f"from .{home} import __all__ as __all__\n")


def main() -> None:
    for short, home in PUBLIC_MODULES.items():
        target = ROOT / "ndcam" / f"{short}.pyi"
        if short in STUBLESS:
            target.unlink(missing_ok=True)
            continue
        target.write_text(stub_text(short, home))
        print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
