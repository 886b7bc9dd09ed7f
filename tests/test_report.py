"""The report's volume viewer: every slice of all three planes, one self-contained file, the data decodable back."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from ndcam import report, viz
from ndcam.core.errors import ConstantMapWarning

from .test_viz import stored_in


def sliders(block: str, uid: str) -> dict[str, int]:
    return {p: int(n) for p, n in re.findall(rf'id="{uid}-(axial|coronal|sagittal)" min="0" max="\d+" value="\d+" '
                                             r'data-slices="(\d+)"', block)}


def test_viewer_every_slice_world_orientation_and_data_round_trip():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(9, 11, 13)).astype(np.float32)
    cam = rng.random((9, 11, 13)).astype(np.float32)
    aff = np.array([[0, 0, -2.0, 30], [1.5, 0, 0, -10], [0, 1.0, 0, 5], [0, 0, 0, 1]])  # voxel axes: A, S, L
    html = report.volume_viewer(vol, cam, "v1", affine=aff, title="lesion")
    ras = viz.to_ras(vol, aff)
    assert ras.data.shape == (13, 9, 11)
    assert sliders(html, "v1") == {"axial": 11, "coronal": 9, "sagittal": 13}  # every slice of every plane
    assert 'max="10"' in html and "World orientation (RAS, radiological)" in html and ">lesion<" in html
    assert "http" not in html and "src=" not in html  # nothing external
    arrays = report.decode_viewer_arrays(html, "v1")
    assert np.array_equal(arrays["map"], np.round(viz.to_ras(cam, aff).data * 255).astype(np.uint8))
    lo, hi = np.percentile(ras.data, [0.5, 99.5])
    expect = np.round(np.clip((ras.data - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(arrays["volume"], expect)
    assert arrays["lut"].shape == (256, 3) and tuple(arrays["lut"][-1]) != tuple(arrays["lut"][0])
    # the same anatomy stored in another orientation embeds the same arrays
    canon = ras.data
    aff_c = np.diag([2.0, 1.5, 1.0, 1.0])
    v2, a2 = stored_in(canon, aff_c, (1, 2, 0), (1,))
    c2, _ = stored_in(viz.to_ras(cam, aff).data, aff_c, (1, 2, 0), (1,))
    b = report.decode_viewer_arrays(report.volume_viewer(v2, c2, "v2", affine=a2), "v2")
    assert np.array_equal(b["volume"], arrays["volume"]) and np.array_equal(b["map"], arrays["map"])


def test_viewer_size_without_affine_and_subsampling():
    vol = np.random.default_rng(1).random((64, 64, 64)).astype(np.float32)
    cam = viz.resize_map(np.random.default_rng(2).random((8, 8, 8)), (64, 64, 64))
    html = report.volume_viewer(vol, cam, "big")
    assert "Voxel axes (no orientation)" in html
    assert sliders(html, "big") == {"axial": 64, "coronal": 64, "sagittal": 64}
    assert len(html) < 1.5 * 2 * 64**3  # both arrays once, compressed, base64: no per-slice pictures
    small = report.volume_viewer(vol, cam, "s", max_voxels=20**3)
    assert "Subsampled by 4" in small and sliders(small, "s") == {"axial": 16, "coronal": 16, "sagittal": 16}


def test_volume_slider_alias_and_report_page():
    block = report.volume_slider(np.random.rand(5, 6, 7), np.random.rand(5, 6, 7), "old", axis=1, max_slices=3)
    assert 'type="range"' in block and sliders(block, "old") == {"axial": 5, "coronal": 6, "sagittal": 7}
    page = report.html_report("t", [("viewer", block), ("png", report.png_bytes(viz.plot_image(
        np.random.rand(8, 9), np.random.rand(8, 9))))])
    assert page.count("<canvas") == 3 and "data:image/png;base64," in page


def test_warnings_html_explains_constant_maps():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viz.plot_image(np.random.rand(8, 9), np.zeros((8, 9)))
        viz.plot_image(np.random.rand(8, 9), np.zeros((8, 9)))
    line = report.warnings_html(caught)
    assert line.count("<p class='ndcam-warning'") == 1  # the same warning once
    assert "ConstantMapWarning" in line and "try another target, layer or method" in line
    assert report.warnings_html([]) == ""
    assert "try another" in report.warnings_html([ConstantMapWarning("map is constant")])
    with pytest.raises(ValueError, match="no embedded"):
        report.decode_viewer_arrays("<div></div>", "nope")


NODE_HARNESS = r"""
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const els = {};
let m;
const txt = /<script type="text\/plain" id="([^"]+)"[^>]*>([^<]*)<\/script>/g;
while ((m = txt.exec(html))) els[m[1]] = {textContent: m[2]};
const rng = /<input type="range" id="([^"]+)" min="0" max="\d+" value="(\d+)"/g;
while ((m = rng.exec(html))) els[m[1]] = {value: m[2]};
const cvs = /<canvas id="([^"]+)" width="(\d+)" height="(\d+)"/g;
while ((m = cvs.exec(html))) {
  const c = {w: +m[2], h: +m[3]};
  c.getContext = () => ({createImageData: (w, h) => ({data: new Uint8ClampedArray(w * h * 4), width: w, height: h}),
                         putImageData: (img) => { c.img = img; }});
  els[m[1]] = c;
}
global.document = {getElementById: (id) => els[id] || (els[id] = {})};
const code = html.match(/<script>([\s\S]*?)<\/script>/)[1];
eval(code);
setTimeout(() => {
  const out = {};
  for (const [id, e] of Object.entries(els)) {
    if (e.img) out[id] = {w: e.img.width, h: e.img.height, r: Array.from(e.img.data.filter((_, i) => i % 4 == 0))};
    else if (e.textContent !== undefined && !id.endsWith("vol") && !id.endsWith("map") && !id.endsWith("lut"))
      out[id] = e.textContent;
  }
  console.log(JSON.stringify(out));
}, 300);
"""


def test_viewer_javascript_draws_the_python_slices(tmp_path):
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the viewer's JavaScript is not run")
    rng = np.random.default_rng(3)
    vol = rng.random((7, 9, 11)).astype(np.float32)
    cam = rng.random((7, 9, 11)).astype(np.float32)
    aff = np.array([[0, -2.0, 0, 0], [0, 0, 1.0, 0], [1.5, 0, 0, 0], [0, 0, 0, 1]])
    html = report.volume_viewer(vol, cam, "js", affine=aff, alpha=0.0)  # opacity 0: the canvas shows the greys
    (tmp_path / "v.html").write_text(html)
    (tmp_path / "h.js").write_text(NODE_HARNESS)
    res = subprocess.run([node, str(tmp_path / "h.js"), str(tmp_path / "v.html")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out.get("js-msg", "") == ""
    arrays = report.decode_viewer_arrays(html, "js")
    ras = viz.to_ras(vol, aff)
    o = viz.volume.Oriented(arrays["volume"], ras.spacing, ras.origin, True, False, ras.perm, ras.flip)
    peak = np.unravel_index(int(np.argmax(arrays["map"])), arrays["map"].shape)
    for plane, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        want = viz.plane_slice(o, plane, int(peak[axis]))["image"]
        got = out[f"js-c-{plane}"]
        assert (got["h"], got["w"]) == want.shape
        assert np.array_equal(np.array(got["r"]).reshape(want.shape), want)
        assert f"(slice {int(peak[axis]) + 1} of {arrays['volume'].shape[axis]})" in out[f"js-t-{plane}"]
