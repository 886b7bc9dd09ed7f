"""explain_dataset in one process: store contents == ndcam.explain on the same units, resume after an interruption,
refused resumes, the lock, variable-size volumes, layer resolution, metrics, summaries, export, command line."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

import ndcam
from ndcam import InputError, InputTypeError
from ndcam.dataset import SettingsMismatchError, StoreLockedError, explain_dataset, open_explanations, summarize
from ndcam.dataset import store as st

from . import dataset_fixtures as F

pytest.importorskip("zarr")


class Interrupt(Exception):
    pass


class Failing(torch.utils.data.Dataset):
    """Signals that raise once when item ``fail_at`` is read (a crash in the middle of a run)."""

    def __init__(self, base, fail_at: int) -> None:
        self.base, self.fail_at, self.failed = base, fail_at, False

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.fail_at and not self.failed:
            self.failed = True
            raise Interrupt(f"crash at {i}")
        return self.base[i]


def reference(model, dataset, unit: int, targets=None, **kw):
    """ndcam.explain on each unit of consecutive samples (per-sample ``targets`` sliced): maps, scores, targets."""
    maps, scores, classes = [], [], []
    for lo in range(0, len(dataset), unit):
        hi = min(len(dataset), lo + unit)
        x = torch.stack([dataset[i]["x"] for i in range(lo, hi)])
        exp = ndcam.explain(model, x, targets=None if targets is None else targets[lo:hi], **kw)
        maps.append(exp.maps)
        scores.append(exp.scores)
        classes.append(exp.targets)
    return torch.cat(maps), torch.cat(scores), torch.cat(classes)


def commits(out) -> list[int]:
    return [json.loads(line)["unit"] for line in (out / "commits.log").read_text().splitlines()]


def test_resume_after_interruption_is_bit_identical(tmp_path):
    ds, net = F.Signals(n=22), F.signal_net()
    out = tmp_path / "store"
    failing = Failing(ds, fail_at=13)  # unit 3 of 4-sample units
    with pytest.raises(Interrupt):
        explain_dataset(net, failing, out, batch_size=4, dtype="float32", progress=False)
    ex = open_explanations(out)
    assert ex.done.tolist() == [True] * 12 + [False] * 10
    with pytest.raises(InputError, match="not committed"):
        ex.maps[13]
    assert np.isnan(ex.scores[12:]).all() and (ex.labels[12:] == -1).all()
    assert not (out / "lock").exists()  # released when the run raised
    ex = explain_dataset(net, failing, out, batch_size=4, dtype="float32", progress=False)
    assert ex.done.all()
    assert sorted(commits(out)) == list(range(6))  # every unit committed exactly once
    maps, scores, targets = reference(net, ds, 4)
    assert torch.equal(ex.maps[:], maps)  # bit-identical in float32 storage
    assert torch.equal(torch.from_numpy(ex.scores), scores)
    assert torch.equal(torch.from_numpy(ex.targets), targets)
    assert ex.labels.tolist() == ds.y.tolist()
    assert ex.keys == [f"sig{i}" for i in range(22)]
    assert not (out / "lock").exists()
    # nothing left to do: a third run commits nothing new
    explain_dataset(net, ds, out, batch_size=4, dtype="float32", progress=False)
    assert sorted(commits(out)) == list(range(6))


def test_half_written_unit_is_not_done(tmp_path, monkeypatch):
    ds, net = F.Signals(n=12), F.signal_net()
    out = tmp_path / "s"
    real = st.commit_unit

    def crash_on_2(path, unit, info):
        if unit == 2:
            raise Interrupt("killed between data and marker")
        real(path, unit, info)

    monkeypatch.setattr(st, "commit_unit", crash_on_2)
    with pytest.raises(Interrupt):
        explain_dataset(net, ds, out, batch_size=4, dtype="float32", progress=False)
    ex = open_explanations(out)
    assert ex.done.tolist() == [True] * 8 + [False] * 4  # unit 2's data is on disk but it is not committed
    assert np.isfinite(ex.root["scores"][8:12]).all()
    monkeypatch.setattr(st, "commit_unit", real)
    ex = explain_dataset(net, ds, out, batch_size=4, dtype="float32", progress=False)
    assert commits(out) == [0, 1, 2]
    assert torch.equal(ex.maps[8:12], reference(net, ds, 4)[0][8:12])


def test_changed_settings_are_refused(tmp_path):
    ds, net = F.Signals(n=8), F.signal_net()
    out = tmp_path / "s"
    explain_dataset(net, ds, out, batch_size=4, progress=False)
    with pytest.raises(SettingsMismatchError, match="method: store has 'gradcam', this run asks 'hirescam'"):
        explain_dataset(net, ds, out, method="hirescam", batch_size=4, progress=False)
    with pytest.raises(SettingsMismatchError, match="unit: store has 4, this run asks 3"):
        explain_dataset(net, ds, out, batch_size=3, progress=False)
    other = F.signal_net()
    with torch.no_grad():
        other[0].weight.add_(1e-3)
    with pytest.raises(SettingsMismatchError, match="weights_sha256"):
        explain_dataset(other, ds, out, batch_size=4, progress=False)
    with pytest.raises(SettingsMismatchError, match="dataset_length"):
        explain_dataset(net, F.Signals(n=9), out, batch_size=4, progress=False)
    with pytest.raises(SettingsMismatchError, match="dtype"):
        explain_dataset(net, ds, out, batch_size=4, dtype="float32", progress=False)
    assert not (out / "lock").exists()  # a refused run leaves no lock behind
    # resume=False starts over with the new settings
    ex = explain_dataset(net, ds, out, method="hirescam", batch_size=4, resume=False, progress=False)
    assert ex.settings["method"] == "hirescam" and ex.done.all() and commits(out) == [0, 1]


def test_target_objects_are_fingerprinted_with_their_fields_and_public_names(tmp_path):
    """A store made with SoftmaxProbability(1) is not resumed by a run asking SoftmaxProbability(0); fingerprints name
    ndcam's callables by their public module (``ndcam.targets``), not the folder they live in."""
    from ndcam.targets import SoftmaxProbability

    assert st.jsonable(SoftmaxProbability(1)) == {"callable:ndcam.targets.SoftmaxProbability": {"classes": 1}}
    assert st.jsonable(ndcam.targets.logits_of) == "callable:ndcam.targets.logits_of"
    assert st.jsonable(ndcam.TokenGrid) == "callable:ndcam.layers.TokenGrid"
    ds, net = F.Signals(n=4), F.signal_net()
    out = tmp_path / "s"
    explain_dataset(net, ds, out, targets=SoftmaxProbability(1), batch_size=4, progress=False)
    with pytest.raises(SettingsMismatchError, match="targets"):
        explain_dataset(net, ds, out, targets=SoftmaxProbability(0), batch_size=4, progress=False)
    explain_dataset(net, ds, out, targets=SoftmaxProbability(1), batch_size=4, progress=False)  # same: resumes


def test_lock_of_another_job(tmp_path):
    ds, net = F.Signals(n=4), F.signal_net()
    out = tmp_path / "s"
    out.mkdir()
    (out / "lock").write_text(json.dumps({"job": "other", "pid": os.getppid(), "host": __import__("socket").gethostname(),
                                          "started": "then"}))
    with pytest.raises(StoreLockedError, match="another job"):
        explain_dataset(net, ds, out, batch_size=4, progress=False)
    assert (out / "lock").exists()  # not ours: left alone
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (out / "lock").write_text(json.dumps({"job": "other", "pid": dead, "host": __import__("socket").gethostname()}))
    with pytest.warns(ndcam.NdcamWarning, match="stale lock"):
        ex = explain_dataset(net, ds, out, batch_size=4, progress=False)
    assert ex.done.all() and not (out / "lock").exists()


def test_variable_size_volumes_and_layer_resolution(tmp_path):
    ds, net = F.Volumes(n=7), F.volume_net()
    out = tmp_path / "v"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ndcam.ConstantMapWarning)
        ex = explain_dataset(net, ds, out, batch_size=3, resolution="layer", dtype="float32", progress=False)
    assert ex.done.all()
    for i in range(7):
        x = ds[i]["x"][None]
        lay = ndcam.explain(net, x, upsample=False)
        full = ndcam.explain(net, x)
        assert ex.layer_maps[i].shape == lay.maps[0].shape
        assert ex.maps[i].shape == x.shape[2:]
        # samples of the same size in one unit are explained as one batch; per sample agrees to float precision
        torch.testing.assert_close(ex.layer_maps[i], lay.maps[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(ex.maps[i], full.maps[0], atol=1e-5, rtol=0)  # upsampled on read
    same = ex.maps[[0, 3, 6]]  # same size: stacked, read in one selection
    assert torch.equal(same, torch.stack([ex.maps[i] for i in (0, 3, 6)]))
    mixed = ex.maps[0:3]  # different sizes: a list
    assert isinstance(mixed, list) and [tuple(m.shape) for m in mixed] == [(14, 12, 10), (12, 10, 8), (12, 10, 8)]
    # items 1, 2, 4, 5 differ from item 0's size: one array per sample
    assert sorted(ex.root["samples"].keys()) == ["1", "2", "4", "5"]
    assert [list(s) for s in ex.input_shapes] == [[1, 14, 12, 10] if i % 3 == 0 else [1, 12, 10, 8] for i in range(7)]
    nib = pytest.importorskip("nibabel")
    paths = ex.export([3, 4], tmp_path / "exp", formats=("nifti", "png"), dataset=ds)
    img = nib.load(str(tmp_path / "exp" / "sample000004.nii.gz"))
    np.testing.assert_allclose(img.affine, ds[4]["affine"].numpy())
    np.testing.assert_allclose(img.get_fdata(), ex.maps[4].numpy(), atol=1e-6)
    assert sum(p.suffix == ".png" for p in paths) == 2
    assert summarize(out).exists()


def test_metrics_summaries_and_float16(tmp_path):
    ds, net = F.Signals(n=10), F.signal_net()
    out = tmp_path / "m"
    ex = explain_dataset(net, ds, out, batch_size=4, targets="label", metrics=("pointing", "deletion"), progress=False)
    assert ex.root["maps"].dtype == np.float16
    maps, _, targets = reference(net, ds, 4, targets=ds.y.tolist())
    assert targets.tolist() == ds.y.tolist()
    torch.testing.assert_close(ex.maps[:], maps, atol=1e-3, rtol=0)  # float16 storage
    masks = torch.stack([ds[i]["mask"] for i in range(10)])
    hits = ndcam.metrics.pointing_game(maps, masks).float().numpy()
    np.testing.assert_array_equal(ex.metrics["pointing"], hits)
    x = torch.stack([ds[i]["x"] for i in range(10)])
    dele = ndcam.metrics.deletion_auc(net, x[4:8], maps[4:8], ds.y[4:8]).numpy()
    np.testing.assert_allclose(ex.metrics["deletion"][4:8], dele, atol=1e-6)
    means = ex.mean_maps("label")
    for g in (0, 1):
        sel = ex.labels == g
        np.testing.assert_allclose(means[g].numpy(), ex.maps[:].numpy()[sel].mean(0), atol=1e-6)
    header, rows = ex.metric_table("label")
    assert header == ["label", "samples", "pointing", "deletion"]
    assert rows[-1][:3] == ["all", 10, f"{hits.mean():.3f}"]
    leads = ex.lead_means(ds, "label")
    np.testing.assert_allclose(leads[1], x[ds.y == 1].mean(0).numpy(), atol=1e-6)
    page = summarize(out, tmp_path / "p.html", dataset=ds)
    text = page.read_text()
    assert "Mean map per label" in text and "data:image/png;base64" in text


def test_bad_arguments_fail_before_work(tmp_path):
    ds, net = F.Signals(n=4), F.signal_net()
    for kw, msg in [({"resolution": "pixel"}, "resolution"), ({"dtype": "int8"}, "dtype"),
                    ({"metrics": ("pointing", "auc")}, "unknown metrics"), ({"batch_size": 0}, "batch_size"),
                    ({"targets": "class"}, "only string target"), ({"targets": [1, 0]}, "one entry per dataset item"),
                    ({"layers": "nope"}, "layer 'nope' does not exist"), ({"method": "nocam"}, "nocam")]:
        with pytest.raises((InputError, ndcam.LayerError), match=msg):
            explain_dataset(net, ds, tmp_path / "x", progress=False, **kw)
    big = F.signal_net()
    with torch.no_grad():
        big[-1].weight.mul_(1e9)
    with pytest.raises(InputError, match="float16 range"):
        explain_dataset(big, ds, tmp_path / "h", normalize=False, progress=False)
    with pytest.raises(InputError, match="empty"):
        explain_dataset(net, [], tmp_path / "x", progress=False)
    with pytest.raises(InputTypeError, match="nn.Module"):
        explain_dataset(lambda x: x, ds, tmp_path / "x", progress=False)
    with pytest.raises(InputError, match=r"\(C, \*spatial\)"):
        explain_dataset(net, [torch.randn(64)], tmp_path / "y", progress=False)
    with pytest.raises(InputError, match="without key 'x'"):
        explain_dataset(net, [{"input": torch.randn(2, 64)}], tmp_path / "z", progress=False)
    assert not (tmp_path / "x").exists()


def test_missing_zarr_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(ImportError, match=r"ndcam\[store\]"):
        explain_dataset(F.signal_net(), F.Signals(n=2), tmp_path / "s", progress=False)


def test_model_left_as_it_was(tmp_path):
    ds, net = F.Signals(n=4), F.signal_net()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    explain_dataset(net, ds, tmp_path / "s", batch_size=4, device="cpu", metrics=("deletion",), progress=False)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


def test_command_line(tmp_path, capsys, monkeypatch):
    from ndcam.app.cli import main

    monkeypatch.setenv("NDCAM_TEST_N", "12")
    out = tmp_path / "cli"
    argv = ["explain-dataset", "--model", "tests.dataset_fixtures:signal_net", "--dataset",
            "tests.dataset_fixtures:signals", "--out", str(out), "--batch-size", "5", "--metrics", "pointing",
            "--no-progress"]
    assert main(argv) == 0
    assert "12/12 samples committed" in capsys.readouterr().out
    assert main(argv[:-1] + ["--method", "hirescam", "--no-progress"]) == 2
    assert "method: store has 'gradcam', this run asks 'hirescam'" in capsys.readouterr().err
    assert main(["summarize", str(out), "--export", "0,11"]) == 0
    text = capsys.readouterr().out
    assert "all\t12\t" in text and (out / "summary.html").exists() and (out / "export" / "sig11.png").exists()
    assert main(["summarize", str(tmp_path / "nothing")]) == 2


def test_mitdb_example_skips_without_records(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, str(root / "examples" / "mitdb_dataset.py"), str(tmp_path / "none"), "--out",
                          str(tmp_path / "s")], capture_output=True, text=True, cwd=root, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert res.returncode == 0 and "skipping" in res.stdout, res.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_mitdb_example_on_real_records(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    folder = root.parent / "shared" / "data" / "mitdb"
    folder = folder if folder.exists() else Path("/work/shared/data/mitdb")
    if not (folder / "208.hea").exists():
        pytest.skip("MIT-BIH records not available")
    pytest.importorskip("wfdb")
    out = tmp_path / "store"
    res = subprocess.run([sys.executable, str(root / "examples" / "mitdb_dataset.py"), str(folder), "--out", str(out),
                          "--epochs", "2"], capture_output=True, text=True, cwd=root, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    ex = open_explanations(out)
    assert ex.done.all() and ex.n > 4000
    assert set(np.unique(ex.labels)) == {0, 1, 2, 3}
    rows = {line.split("\t")[0]: line.split("\t") for line in res.stdout.splitlines() if "\t" in line}
    assert float(rows["V"][2]) > 0.5  # PVC maps peak on the QRS complex far more often than not
    assert (out / "summary.html").exists()


def test_dataloader_workers_give_the_same_store(tmp_path):
    ds, net = F.Signals(n=10), F.signal_net()
    ex = explain_dataset(net, ds, tmp_path / "w", batch_size=4, num_workers=2, dtype="float32", progress=False)
    assert torch.equal(ex.maps[:], reference(net, ds, 4)[0])
    assert ex.keys == [f"sig{i}" for i in range(10)]
