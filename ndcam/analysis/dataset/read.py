"""Reading a dataset explanation back: lazy maps, per-sample arrays, streaming summaries, export, an HTML summary."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core import ops
from ...core.errors import InputError
from ...core.explanation import Explanation
from . import store as st
from .items import parse_item

__all__ = ["open_explanations", "Explanations", "summarize"]


class _Maps:
    """``ex.maps[i]``: the map(s) of sample ``i`` as a float32 tensor ``([K,] *spatial)``; a slice or a list of indices
    gives a stacked tensor (same shapes) or a list. Read lazily, one sample or chunk at a time.
    """

    def __init__(self, ex: Explanations, upsample: bool) -> None:
        self.ex, self.upsample = ex, upsample

    def __len__(self) -> int:
        return self.ex.n

    def __getitem__(self, index: Any):
        if isinstance(index, (int, np.integer)):
            return self.ex._map(int(index), self.upsample)
        idx = [int(i) for i in (range(self.ex.n)[index] if isinstance(index, slice) else np.asarray(index).reshape(-1))]
        maps = self.ex._maps(idx, self.upsample)
        if maps and all(m.shape == maps[0].shape for m in maps):
            return torch.stack(maps)
        return maps


class Explanations:
    """A dataset explanation store opened for reading (see :func:`open_explanations`).

    Attributes:
        path: the store's folder.
        settings: the run's settings (method, options, layers, weights hash, unit, resolution, dtype, ...).
        n: number of samples in the dataset.
        done: ``(n,)`` bool, which samples are committed (only those are ever read).
        maps: lazy maps at the input's resolution (upsampled on read when stored at layer resolution).
        layer_maps: lazy maps as stored.
    """

    def __init__(self, out: str | os.PathLike) -> None:
        zarr = st.zarr_module()
        self.path = Path(out)
        settings = st.read_settings(self.path)
        if settings is None:
            raise InputError(f"{self.path} is not a dataset explanation store (no {st.SETTINGS}); make one with "
                             f"ndcam.explain_dataset or `ndcam explain-dataset`")
        self.settings = settings
        self.root = zarr.open_group(str(self.path / st.DATA), mode="r")
        self.n, self.unit, self.k = settings["dataset_length"], settings["unit"], settings["k"]
        self.rank = settings["rank"]
        self.markers = st.read_markers(self.path)
        self.done = np.zeros(self.n, bool)
        self._variable: set[int] = set()
        self._keys: list = [None] * self.n
        self._affines: list = [None] * self.n
        for m in self.markers.values():
            lo, hi = m["indices"]
            self.done[lo:hi] = True
            self._variable.update(m.get("variable", []))
            for name, target in (("keys", self._keys), ("affines", self._affines)):
                if m.get(name):
                    target[lo:hi] = m[name]
        self.maps = _Maps(self, upsample=True)
        self.layer_maps = _Maps(self, upsample=False)
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"Explanations({str(self.path)!r}, method={self.settings['method']!r}, "
                f"{int(self.done.sum())}/{self.n} samples done)")

    # -- per-sample arrays (NaN / -1 where not committed) ---------------------------------------------------------
    def _array(self, name: str) -> np.ndarray:
        if name not in self._cache:
            a = self.root[name][...]
            if a.dtype.kind == "f":
                a[~self.done] = np.nan
            else:
                a[~self.done] = -1
            self._cache[name] = a
        return self._cache[name]

    @property
    def done_indices(self) -> np.ndarray:
        return np.flatnonzero(self.done)

    @property
    def scores(self) -> np.ndarray:
        """Target scores ``(n, [K])``."""
        return self._array("scores")

    @property
    def targets(self) -> np.ndarray:
        """Explained classes ``(n, [K])`` (-1: not a class target or not done)."""
        return self._array("targets")

    @property
    def labels(self) -> np.ndarray:
        """Labels ``(n,)`` from the items' ``y`` (-1: none)."""
        return self._array("labels")

    @property
    def raw_min(self) -> np.ndarray:
        return self._array("raw_min")

    @property
    def raw_max(self) -> np.ndarray:
        return self._array("raw_max")

    @property
    def input_shapes(self) -> np.ndarray:
        """``(n, 1 + rank)``: channels and spatial size of each input."""
        return self._array("input_shape")

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        """Per-sample metrics ``{name: (n, [K])}``."""
        return {name: self._array(f"metrics/{name}") for name in self.settings["metrics"]}

    @property
    def keys(self) -> list:
        """Items' ``key`` (None where absent)."""
        return list(self._keys)

    @property
    def affines(self) -> list:
        """Items' 4x4 ``affine`` (None where absent)."""
        return list(self._affines)

    # -- maps ---------------------------------------------------------------------------------------------------
    def _check(self, i: int) -> int:
        if not -self.n <= i < self.n:
            raise IndexError(f"sample {i} out of range for a store of {self.n} samples")
        i %= self.n
        if not self.done[i]:
            raise InputError(f"sample {i} is not committed in {self.path} (its unit {i // self.unit} has no marker); "
                             f"resume the run to explain it")
        return i

    def _map(self, i: int, upsample: bool) -> torch.Tensor:
        i = self._check(i)
        a = self.root["samples"][str(i)][...] if i in self._variable else self.root["maps"][i]
        m = torch.from_numpy(np.asarray(a, dtype=np.float32))
        return self._to_input(m, tuple(int(s) for s in self.input_shapes[i][1:])) if upsample else m

    def _maps(self, idx: list[int], upsample: bool) -> list[torch.Tensor]:
        """Several samples; those in the common array read in one selection (each chunk decoded once)."""
        idx = [self._check(i) for i in idx]
        common = [i for i in idx if i not in self._variable]
        got: dict[int, torch.Tensor] = {}
        if common:
            order = sorted(set(common))
            block = np.asarray(self.root["maps"].get_orthogonal_selection((order,)), dtype=np.float32)
            got = {i: torch.from_numpy(block[j]) for j, i in enumerate(order)}
        out = []
        for i in idx:
            m = got[i] if i in got else self._map(i, False)
            out.append(self._to_input(m, tuple(int(s) for s in self.input_shapes[i][1:])) if upsample else m)
        return out

    def _to_input(self, m: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        if self.settings["resolution"] != "layer" or tuple(m.shape[-len(size):]) == size:
            return m
        lead = m.shape[: m.ndim - len(size)]
        flat = ops.upsample(m.reshape(-1, *m.shape[m.ndim - len(size):]), size)
        if self.settings["normalize"]:
            flat = ops.minmax_normalize(flat, batch_dims=1)
        return flat.reshape(*lead, *size)

    def explanation(self, indices: Any) -> Explanation:
        """Committed samples as an :class:`ndcam.Explanation` (maps at the input's resolution; same shapes)."""
        idx = [self._check(int(i)) for i in np.atleast_1d(np.asarray(indices))]
        maps = self.maps[idx]
        if isinstance(maps, list):
            raise InputError(f"samples {idx} have maps of different shapes; ask for them one at a time")
        t = self.targets[idx]
        return Explanation(maps=maps, scores=torch.from_numpy(self.scores[idx]),
                           targets=None if (t < 0).all() else torch.from_numpy(t),
                           layers=list(self.settings.get("layers_resolved", [])), method=self.settings["method"],
                           raw_min=torch.from_numpy(self.raw_min[idx]), raw_max=torch.from_numpy(self.raw_max[idx]),
                           input_shape=(len(idx), *(int(s) for s in self.input_shapes[idx[0]])))

    # -- streaming summaries ------------------------------------------------------------------------------------
    def _groups_of(self, by: str, k: int) -> np.ndarray:
        if by == "label":
            return self.labels
        if by == "target":
            t = self.targets
            return t[:, k] if t.ndim == 2 else t
        if by == "all":
            return np.where(self.done, 0, -1)
        raise InputError(f"by must be 'label', 'target' or 'all', got {by!r}")

    def _chunks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Committed units of the common maps array, one chunk read at a time."""
        for m in self.markers.values():
            lo, hi = m["indices"]
            yield lo, hi, self.root["maps"][lo:hi]

    def mean_maps(self, by: str = "label", k: int = 0) -> dict[int, torch.Tensor]:
        """Mean map per group (``by="label"``, ``"target"`` or ``"all"``; target ``k`` when K maps per sample),
        streamed over the committed samples one unit at a time, at the input's resolution. Samples stored one array
        per sample (other sizes) are left out of the means.
        """
        groups = self._groups_of(by, k)
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        size: tuple[int, ...] = ()
        for lo, hi, block in self._chunks():
            for j, i in enumerate(range(lo, hi)):
                if i in self._variable:
                    continue
                g = int(groups[i])
                m = block[j][k] if self.k else block[j]
                sums[g] = sums.get(g, 0) + m.astype(np.float64)
                counts[g] = counts.get(g, 0) + 1
                size = size or tuple(int(s) for s in self.input_shapes[i][1:])
        return {g: self._to_input(torch.from_numpy((sums[g] / counts[g]).astype(np.float32)), size)
                for g in sorted(sums)}

    def group_counts(self, by: str = "label", k: int = 0) -> dict[int, int]:
        """Committed samples per group."""
        groups = self._groups_of(by, k)[self.done]
        values, counts = np.unique(groups, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    def lead_means(self, dataset: Any, by: str = "label", k: int = 0) -> dict[int, np.ndarray]:
        """Signals: the mean input per group, per lead ``(C, L)`` (read from ``dataset`` for the committed samples),
        to draw under the group's mean map.
        """
        if self.rank != 1:
            raise InputError(f"lead means are for signals (spatial rank 1); this store has rank {self.rank}")
        groups = self._groups_of(by, k)
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for i in self.done_indices:
            if i in self._variable:
                continue
            x = parse_item(dataset[int(i)], int(i)).x.numpy().astype(np.float64)
            g = int(groups[i])
            sums[g] = sums.get(g, 0) + x
            counts[g] = counts.get(g, 0) + 1
        return {g: (sums[g] / counts[g]).astype(np.float32) for g in sorted(sums)}

    def metric_table(self, by: str = "label", k: int = 0) -> tuple[list[str], list[list[Any]]]:
        """``(header, rows)``: per group and overall, the number of committed samples and each metric's mean."""
        names = list(self.settings["metrics"])
        groups = self._groups_of(by, k)
        mets = {n: (v[:, k] if v.ndim == 2 else v) for n, v in self.metrics.items()}
        rows = []
        keys = sorted(set(int(g) for g in groups[self.done]))
        for g in [*keys, None]:
            sel = self.done if g is None else self.done & (groups == g)
            row: list[Any] = ["all" if g is None else g, int(sel.sum())]
            for n in names:
                v = mets[n][sel]
                row.append(f"{float(np.nanmean(v)):.3f}" if v.size and not np.isnan(v).all() else "-")
            rows.append(row)
        return [by, "samples", *names], rows

    # -- export -------------------------------------------------------------------------------------------------
    def export(self, indices: Any, folder: str | os.PathLike, formats: tuple[str, ...] = ("png",),
               dataset: Any = None, **plot_kwargs: Any) -> list[Path]:
        """Write chosen committed samples: ``png`` (the rank's view from :func:`ndcam.viz.plot_explanation`, over the
        input when ``dataset`` is given) and/or ``nifti`` (volumes; ``.nii.gz`` with the item's ``affine``, else the
        identity). One file per sample and target. Returns the paths written.
        """
        bad = [f for f in formats if f not in ("png", "nifti")]
        if bad:
            raise InputError(f"unknown export formats {bad}; choose from ['png', 'nifti']")
        if "nifti" in formats and self.rank != 3:
            raise InputError(f"NIfTI export is for volumes (spatial rank 3); this store has rank {self.rank}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i in np.atleast_1d(np.asarray(indices)):
            i = self._check(int(i))
            exp = self.explanation([i])
            name = self._keys[i] or f"sample{i:06d}"
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
            for kk in range(self.k or 1):
                suffix = f"_k{kk}" if self.k else ""
                if "png" in formats:
                    from ...app.report import png_bytes
                    from ...app.viz import plot_explanation

                    x = None if dataset is None else parse_item(dataset[i], i).x[None]
                    label = "" if self.labels[i] < 0 else f", label {self.labels[i]}"
                    title = plot_kwargs.pop("title", None) or f"{self.settings['method']}: sample {i}{label}"
                    fig = plot_explanation(exp, x, 0, k=kk, title=title, **plot_kwargs)
                    p = folder / f"{name}{suffix}.png"
                    p.write_bytes(png_bytes(fig))
                    written.append(p)
                if "nifti" in formats:
                    try:
                        import nibabel as nib
                    except ImportError as err:
                        raise InputError("NIfTI export needs the optional package nibabel (pip install nibabel)") from err
                    m = exp.maps[0][kk] if self.k else exp.maps[0]
                    affine = np.asarray(self._affines[i]) if self._affines[i] is not None else np.eye(4)
                    p = folder / f"{name}{suffix}.nii.gz"
                    nib.save(nib.Nifti1Image(m.numpy().astype(np.float32), affine), str(p))
                    written.append(p)
        return written


def open_explanations(out: str | os.PathLike) -> Explanations:
    """Open a store written by :func:`ndcam.explain_dataset` for reading (also while a run is still writing it: only
    committed samples are visible).
    """
    return Explanations(out)


def _mean_map_figure(ex: Explanations, means: dict[int, torch.Tensor], counts: dict[int, int], by: str,
                     leads: dict[int, np.ndarray] | None, names: dict[int, str] | None, fs: float | None = None,
                     lead_names: list[str] | None = None):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups = list(means)
    label = lambda g: f"{by} {names.get(g, g) if names else g} (n={counts.get(g, 0)})"  # noqa: E731
    if ex.rank == 1:
        fig, axes = plt.subplots(len(groups), 1, figsize=(9, 1.9 * len(groups) + 0.4), squeeze=False, sharex=True)
        for ax, g in zip(axes[:, 0], groups):
            m = means[g].numpy()
            t = np.arange(m.shape[-1]) / (fs or 1.0)
            if leads is not None and g in leads:
                sig = leads[g]
                lo, hi = float(sig.min()), float(sig.max())
                ax.imshow(m[None], aspect="auto", cmap="jet", vmin=0, vmax=1, alpha=0.5,
                          extent=(t[0], t[-1], lo, hi), origin="lower")
                for c in range(sig.shape[0]):
                    name = lead_names[c] if lead_names and c < len(lead_names) else f"lead {c}"
                    ax.plot(t, sig[c], lw=0.9, label=f"mean {name}")
                if sig.shape[0] > 1:
                    ax.legend(fontsize=7, loc="upper right")
            else:
                ax.plot(t, m, color="crimson")
                ax.set_ylim(0, 1.02)
                ax.set_ylabel("mean map")
            ax.set_title(label(g), fontsize=9)
        axes[-1, 0].set_xlabel("time in the window (s)" if fs else "sample")
    else:
        views = 1 if ex.rank == 2 else 3
        fig, axes = plt.subplots(len(groups), views, figsize=(2.8 * views + 0.8, 2.7 * len(groups)), squeeze=False)
        for r, g in enumerate(groups):
            m = means[g].numpy()
            imgs = [m] if ex.rank == 2 else [m.max(a) for a in range(3)]
            for c, img in enumerate(imgs):
                ax = axes[r, c]
                im = ax.imshow(img, cmap="jet", vmin=0, vmax=max(float(m.max()), 1e-6))
                ax.set_axis_off()
                view = "" if ex.rank == 2 else f"max along axis {c}"
                ax.set_title(f"{label(g)}\n{view}" if c == 0 else view, fontsize=8)
            fig.colorbar(im, ax=axes[r, -1], fraction=0.046)
    fig.suptitle(f"mean {ex.settings['method']} map per {by}")
    fig.tight_layout()
    return fig


def summarize(out: str | os.PathLike, html_path: str | os.PathLike | None = None, *, by: str = "label",
              dataset: Any = None, names: dict[int, str] | None = None, max_groups: int = 12,
              fs: float | None = None, leads: list[str] | None = None) -> Path:
    """Write one self-contained HTML page summarizing a store: settings, progress, metric table per group and the
    mean map per group (over the mean input per lead for signals when ``dataset`` is given). Returns its path
    (default ``out/summary.html``).

    Args:
        out: the store.
        html_path: where to write the page.
        by: group samples by ``"label"`` (falls back to ``"target"``/``"all"`` without labels), ``"target"``, ``"all"``.
        dataset: the dataset the store was made from (signals: mean input per lead under the mean maps).
        names: display names of the groups (e.g. ``{0: "N", 1: "V"}``).
        max_groups: draw at most this many groups (the largest).
        fs: sampling rate of signals (time axis in seconds).
        leads: lead names of signals.
    """
    from ...app.report import html_report, png_bytes, table

    ex = open_explanations(out)
    if by == "label" and (ex.labels[ex.done] < 0).all():
        by = "target" if (ex.targets[ex.done] >= 0).all() else "all"
    s = ex.settings
    blocks: list[tuple[str, str | bytes]] = []
    rows = [[k, s[k]] for k in ("method", "method_options", "targets", "layers", "layers_resolved", "resolution",
                                "dtype", "unit", "dataset_length", "first_item_shape", "metrics", "weights_sha256",
                                "ndcam_version") if k in s]
    blocks.append(("Settings", table(rows, ["setting", "value"])))
    summary = json.loads((ex.path / "summary.json").read_text()) if (ex.path / "summary.json").exists() else {}
    prog: list[list[Any]] = [["samples committed", f"{int(ex.done.sum())} / {ex.n}"], ["units committed", len(ex.markers)]]
    if ex.markers:
        comp = sum(m.get("compute_s", 0) for m in ex.markers.values())
        wr = sum(m.get("write_s", 0) for m in ex.markers.values())
        prog += [["compute seconds (all ranks)", f"{comp:.1f}"], ["write seconds (all ranks)", f"{wr:.1f}"],
                 ["samples per compute-second", f"{ex.done.sum() / max(comp, 1e-9):.1f}"]]
    for key in ("world_size", "seconds_this_run"):
        if key in summary:
            prog.append([key.replace("_", " "), summary[key]])
    blocks.append(("Progress", table(prog, ["", ""])))
    if not ex.done.any():
        blocks.append(("", "<p>No sample is committed yet.</p>"))
    else:
        header, mrows = ex.metric_table(by)
        if names:
            mrows = [[names.get(r[0], r[0]) if r[0] != "all" else "all", *r[1:]] for r in mrows]
        blocks.append((f"Per {by}", table(mrows, header)))
        means = ex.mean_maps(by)
        counts = ex.group_counts(by)
        keep = sorted(means, key=lambda g: -counts.get(g, 0))[:max_groups]
        means = {g: means[g] for g in sorted(keep)}
        lead_means = ex.lead_means(dataset, by) if dataset is not None and ex.rank == 1 else None
        blocks.append((f"Mean map per {by}", png_bytes(_mean_map_figure(ex, means, counts, by, lead_means, names, fs,
                                                                                 leads))))
    html_path = Path(html_path) if html_path is not None else ex.path / "summary.html"
    html_path.write_text(html_report(f"ndcam dataset explanation: {ex.path.name}", blocks))
    return html_path
