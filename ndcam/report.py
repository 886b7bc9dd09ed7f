"""One self-contained HTML report: pictures embedded as data URIs, no network, a slice slider for volumes."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

__all__ = ["png_bytes", "volume_slider", "volume_viewer", "html_report", "table"]


def png_bytes(fig: Any, dpi: int = 90) -> bytes:
    """Render a matplotlib Figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _img(b: bytes, alt: str = "", attrs: str = "") -> str:
    return f'<img alt="{html.escape(alt)}" {attrs} src="data:image/png;base64,{base64.b64encode(b).decode()}">'


def volume_slider(volume: Any, cam: Any, uid: str, *, axis: int = 0, max_slices: int = 48) -> str:
    """HTML block: one overlay picture per slice along ``axis`` and a range input that switches between them."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    vol = np.asarray(volume, dtype=np.float32)
    m = np.asarray(cam, dtype=np.float32)
    n = vol.shape[axis]
    idx = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
    frames = []
    for i in idx:
        fig, ax = plt.subplots(figsize=(3.2, 3.2))
        ax.imshow(np.take(vol, i, axis=axis), cmap="gray")
        ax.imshow(np.take(m, i, axis=axis), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"slice {i}")
        fig.tight_layout()
        frames.append(png_bytes(fig, dpi=70))
    peak = int(np.argmin(np.abs(idx - np.unravel_index(int(np.argmax(m)), m.shape)[axis])))
    imgs = "".join(
        _img(b, f"slice {i}", f'class="{uid}" style="display:{"block" if k == peak else "none"}"')
        for k, (i, b) in enumerate(zip(idx, frames))
    )
    return (
        f'<div><input type="range" min="0" max="{len(frames) - 1}" value="{peak}" style="width:320px" '
        f"oninput=\"var f=document.getElementsByClassName('{uid}');for(var j=0;j<f.length;j++)"
        f"f[j].style.display=(j==this.value)?'block':'none';\"> slice slider ({len(frames)} slices)"
        f"{imgs}</div>"
    )


def volume_viewer(volume: Any, cam: Any, uid: str, *, affine: Any = None, title: str | None = None) -> str:
    """HTML block to step through a volume with its map overlaid (contract; ``affine`` orients it in world space)."""
    return volume_slider(volume, cam, uid)


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A small HTML table."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table border=1 cellpadding=4 style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"


def html_report(title: str, blocks: list[tuple[str, str | bytes]]) -> str:
    """Assemble ``[(heading, html or png bytes), ...]`` into one self-contained HTML page."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for heading, content in blocks:
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_img(content, heading, 'style="max-width:100%"') if isinstance(content, bytes) else content)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;max-width:1150px;margin:auto;padding:1em}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
