"""Run every benchmark and update benchmarks/RESULTS.md (``bash dev.sh bench [--quick]``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(speed.main(sys.argv[1:]))
