"""One self-contained HTML report: pictures embedded as data URIs, no network, a client-side volume viewer.

:func:`volume_viewer` embeds the volume and its map once (quantized to ``uint8``, zlib-compressed, base64) and
draws every slice of the three planes on ``<canvas>`` elements with a few lines of JavaScript: greys for the volume,
the colormap's 256-entry table for the map, aspect from the voxel spacing, world orientation as in
:func:`ndcam.viz.plot_volume`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from .viz.common import png_bytes

__all__ = ["png_bytes", "volume_viewer", "volume_slider", "html_report", "html_section", "table", "warnings_html",
           "decode_viewer_arrays"]

#: largest number of voxels embedded as-is; bigger volumes are subsampled by a whole stride (said in the viewer)
MAX_VOXELS = 2**24


def _img(b: bytes, alt: str = "", attrs: str = "") -> str:
    return f'<img alt="{html.escape(alt)}" {attrs} src="data:image/png;base64,{base64.b64encode(b).decode()}">'


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(a, dtype=np.uint8).tobytes(), 6)).decode()


_JS = r"""
(function(){
var U=%(uid)s, S=%(shape)s, SP=%(spacing)s, OR=%(origin)s, ORI=%(oriented)s, RADIO=%(radio)s, PEAK=%(peak)s;
function el(s){return document.getElementById(U+"-"+s);}
function b64(s){var b=atob(s.trim()),a=new Uint8Array(b.length);for(var i=0;i<b.length;i++)a[i]=b.charCodeAt(i);return a;}
async function inflate(a){
  if(typeof DecompressionStream==="undefined")throw new Error("this browser cannot decompress (DecompressionStream)");
  var s=new Blob([a]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(s).arrayBuffer());}
var AX={axial:2,coronal:1,sagittal:0}, NAMES=["axial","coronal","sagittal"], V, M, LUT=b64(el("lut").textContent);
function geo(p){
  var a=ORI?AX[p]:NAMES.indexOf(p), r=[0,1,2].filter(function(q){return q!=a;});
  var h=r[1], v=r[0], fh=false, fv=false;
  if(ORI){h=r[0]; v=r[1]; fv=true; fh=(h==1)?true:RADIO;}
  return {a:a,h:h,v:v,fh:fh,fv:fv};}
function draw(p){
  var g=geo(p), k=+el(p).value, W=S[g.h], H=S[g.v], cv=el("c-"+p), ctx=cv.getContext("2d");
  var al=+el("alpha").value/100, img=ctx.createImageData(W,H), d=img.data, st=[S[1]*S[2],S[2],1], ix=[0,0,0];
  for(var r=0;r<H;r++){for(var c=0;c<W;c++){
    ix[g.a]=k; ix[g.v]=g.fv?H-1-r:r; ix[g.h]=g.fh?W-1-c:c;
    var n=ix[0]*st[0]+ix[1]*st[1]+ix[2]*st[2], gv=V[n], m=M[n], o=4*(r*W+c);
    d[o]=(1-al)*gv+al*LUT[3*m]; d[o+1]=(1-al)*gv+al*LUT[3*m+1]; d[o+2]=(1-al)*gv+al*LUT[3*m+2]; d[o+3]=255;}}
  ctx.putImageData(img,0,0);
  var lab=ORI?(p+" "+"xyz"[g.a]+" = "+(OR[g.a]+k*SP[g.a]).toFixed(1)+" mm"):("array axis "+g.a+" = "+k);
  el("t-"+p).textContent=lab+" (slice "+(k+1)+" of "+S[g.a]+")";}
function drawAll(){NAMES.forEach(draw);}
Promise.all([inflate(b64(el("vol").textContent)),inflate(b64(el("map").textContent))]).then(function(r){
  V=r[0]; M=r[1];
  NAMES.forEach(function(p){el(p).oninput=function(){draw(p);};});
  el("alpha").oninput=drawAll; drawAll();
}).catch(function(e){el("msg").textContent="viewer unavailable: "+e.message;});
})();
"""


def volume_viewer(volume: Any, cam: Any, uid: str, *, affine: Any = None, title: str | None = None,
                  convention: str = "radiological", cmap: str = "jet", alpha: float = 0.45,
                  max_voxels: int = MAX_VOXELS, size_px: int = 300) -> str:
    """HTML block that steps through every slice of the axial, coronal and sagittal planes, map overlaid.

    Args:
        volume: ``(D, H, W)`` (or ``(C, D, H, W)``: first channel) as stored.
        cam: map of the same shape (resized when it differs), in ``[0, 1]``.
        uid: prefix of the element ids (unique per page).
        affine: 4x4 voxel-to-world matrix (NIfTI RAS+) for world orientation; without it, array axes.
        title: line above the viewer.
        convention: ``"radiological"`` or ``"neurological"`` (see :mod:`ndcam.viz.volume`).
        cmap: colormap of the map (embedded as a 256-entry table).
        alpha: initial map opacity (a slider changes it).
        max_voxels: volumes with more voxels are subsampled by a whole stride per axis (said in the block).
        size_px: on-screen size of each plane's longest side.

    Returns:
        An HTML string: the data (volume windowed to its 0.5-99.5 percentiles and the map, both ``uint8``) is held
        once, zlib-compressed in base64; every slice is drawn in the browser.
    """
    from matplotlib import colormaps

    from .viz import resize_map, to_ras
    from .viz.volume import PLANES

    uid = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(uid)) or "vol"
    vol = np.asarray(volume.detach().float().cpu().numpy() if hasattr(volume, "detach") else volume, np.float32)
    vol = vol[0] if vol.ndim == 4 else vol
    m = resize_map(cam, vol.shape)
    ov, om = to_ras(vol, affine), to_ras(m, affine)
    data, mdata, spacing = ov.data, om.data, ov.spacing.copy()
    note = ""
    if data.size > max_voxels:
        step = math.ceil((data.size / max_voxels) ** (1 / 3))
        data, mdata = data[::step, ::step, ::step], mdata[::step, ::step, ::step]
        spacing = spacing * step
        note = f" Subsampled by {step} along each axis to stay under {max_voxels} voxels."
    finite = data[np.isfinite(data)]
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1.0
    v8 = np.round(np.clip((np.nan_to_num(data, nan=lo) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    m8 = np.round(np.clip(np.nan_to_num(mdata), 0, 1) * 255).astype(np.uint8)
    lut = np.round(colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    peak = [int(i) for i in np.unravel_index(int(np.argmax(m8)), m8.shape)]
    radio = convention == "radiological"
    shape = list(v8.shape)
    planes = []
    for p in PLANES:
        a = {"axial": 2, "coronal": 1, "sagittal": 0}[p] if ov.oriented else PLANES.index(p)
        rem = [q for q in range(3) if q != a]
        h_ax, v_ax = (rem[0], rem[1]) if ov.oriented else (rem[1], rem[0])
        scale = size_px / max(shape[h_ax] * spacing[h_ax], shape[v_ax] * spacing[v_ax])
        w_css, h_css = shape[h_ax] * spacing[h_ax] * scale, shape[v_ax] * spacing[v_ax] * scale
        if ov.oriented:
            pos = {0: ("R", "L"), 1: ("A", "P"), 2: ("S", "I")}
            flip_h = True if h_ax == 1 else radio
            left, right = (pos[h_ax][0], pos[h_ax][1]) if flip_h else (pos[h_ax][1], pos[h_ax][0])
            top, bottom = pos[v_ax]
            letters = "".join(
                f'<span style="position:absolute;{css};color:#ff0;font:bold 13px sans-serif">{t}</span>'
                for t, css in ((left, "left:3px;top:45%"), (right, "right:3px;top:45%"),
                               (top, "top:2px;left:48%"), (bottom, "bottom:2px;left:48%")))
        else:
            letters = ""
        planes.append(
            f'<div style="display:inline-block;margin:4px;vertical-align:top"><div id="{uid}-t-{p}" '
            f'style="font:12px sans-serif">{p}</div><div style="position:relative;width:{w_css:.0f}px;'
            f'height:{h_css:.0f}px"><canvas id="{uid}-c-{p}" width="{shape[h_ax]}" height="{shape[v_ax]}" '
            f'style="width:{w_css:.0f}px;height:{h_css:.0f}px;image-rendering:pixelated;background:#000">'
            f'</canvas>{letters}</div><input type="range" id="{uid}-{p}" min="0" max="{shape[a] - 1}" '
            f'value="{peak[a]}" data-slices="{shape[a]}" style="width:{max(w_css, 160):.0f}px"></div>')
    orient = (f"World orientation (RAS, {convention}), voxel {spacing[0]:.3g} x {spacing[1]:.3g} x {spacing[2]:.3g} mm"
              if ov.oriented else "Voxel axes (no orientation): no affine given")
    params = {"uid": json.dumps(uid), "shape": json.dumps(shape), "spacing": json.dumps([float(s) for s in spacing]),
              "origin": json.dumps([float(o) for o in ov.origin]), "oriented": json.dumps(bool(ov.oriented)),
              "radio": json.dumps(radio), "peak": json.dumps(peak)}
    head = f"<p><b>{html.escape(title)}</b></p>" if title else ""
    return (
        f'<div class="ndcam-viewer" id="{uid}">{head}<p style="font:12px sans-serif">{orient}; every slice of each '
        f"plane (sliders), starting at the map's peak. Volume windowed to its 0.5-99.5 percentiles.{note} "
        f'Map opacity <input type="range" id="{uid}-alpha" min="0" max="100" value="{round(alpha * 100)}"> '
        f'<span id="{uid}-msg" style="color:#a00"></span></p>{"".join(planes)}'
        f'<script type="text/plain" id="{uid}-vol" data-shape="{",".join(map(str, shape))}" '
        f'data-encoding="zlib+base64" data-range="{float(lo):.6g},{float(hi):.6g}">{_pack(v8)}</script>'
        f'<script type="text/plain" id="{uid}-map" data-shape="{",".join(map(str, shape))}" '
        f'data-encoding="zlib+base64">{_pack(m8)}</script>'
        f'<script type="text/plain" id="{uid}-lut" data-shape="256,3">'
        f"{base64.b64encode(lut.tobytes()).decode()}</script>"
        f"<script>{_JS % params}</script></div>"
    )


def decode_viewer_arrays(block: str, uid: str) -> dict[str, np.ndarray]:
    """Read back the arrays a :func:`volume_viewer` block embeds: ``{"volume", "map"}`` as ``uint8`` ``(X, Y, Z)``
    and ``"lut"`` ``(256, 3)`` (for tests and for anyone who wants the data out of a report).
    """
    import re

    out = {}
    for key, name in (("vol", "volume"), ("map", "map"), ("lut", "lut")):
        hit = re.search(rf'<script type="text/plain" id="{re.escape(uid)}-{key}" data-shape="([0-9,]+)"[^>]*>'
                        r"([A-Za-z0-9+/=]*)</script>", block)
        if hit is None:
            raise ValueError(f"no embedded {name!r} for viewer {uid!r}")
        shape = tuple(int(s) for s in hit.group(1).split(","))
        raw = base64.b64decode(hit.group(2))
        raw = raw if key == "lut" else zlib.decompress(raw)
        out[name] = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    return out


def volume_slider(volume: Any, cam: Any, uid: str, *, axis: int = 0, max_slices: int | None = None,
                  affine: Any = None) -> str:
    """Former name of :func:`volume_viewer` (``axis`` and ``max_slices`` are ignored: every slice of every plane is
    available now).
    """
    return volume_viewer(volume, cam, uid, affine=affine)


def warnings_html(caught: Iterable[Any]) -> str:
    """One HTML line per distinct warning (``warnings.catch_warnings(record=True)`` entries, ``Warning``s or text),
    saying why a constant map can happen and what to try. Empty string when there is none.
    """
    from ..core.errors import ConstantMapWarning

    lines: list[str] = []
    for w in caught:
        msg = getattr(w, "message", w)
        cat = getattr(w, "category", type(msg))
        text = str(msg)
        if isinstance(cat, type) and issubclass(cat, ConstantMapWarning) and "try" not in text:
            text += " -- nothing to show; try another target, layer or method"
        kind = html.escape(getattr(cat, "__name__", "warning"))
        line = f"<p class='ndcam-warning' style='background:#fff3b0;padding:4px'>{kind}: {html.escape(text)}</p>"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


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


def html_section(heading: str, fig: Any, after: str = "") -> str:
    """``<section>`` with an escaped heading, the figure as an embedded PNG (the figure is closed) and ``after``."""
    png = base64.b64encode(png_bytes(fig, dpi=90)).decode()
    img = f'<img alt="{html.escape(heading)}" style="max-width:100%" src="data:image/png;base64,{png}">'
    return f"<section><h3>{html.escape(heading)}</h3>{img}{after}</section>"
