"""Models for the command line: .pt2 archives checked before torch loads them, factories from the working folder,
weights that do not fit."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ndcam import InputError
from ndcam.app import cli
from ndcam.io import check_pt2, load_model

ROOT = Path(__file__).resolve().parents[1]


class Marker:
    """A pickle payload whose loading creates a file (stand-in for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


@pytest.fixture()
def archive(tmp_path):
    ep = torch.export.export(small_net(), (torch.randn(2, 1, 10, 12),))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    return tmp_path / "m.pt2"


def rewrite(src: Path, dst: Path, replace: dict | None = None, add: dict | None = None) -> None:
    """Copy a zip, swapping the payloads whose name ends with a key of ``replace`` and adding ``add`` entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for item in zin.infolist():
            blob = zin.read(item.filename)
            for suffix, new in (replace or {}).items():
                if item.filename.endswith(suffix):
                    blob = new
            zout.writestr(item, blob)
        for name, blob in (add or {}).items():
            zout.writestr(f"{root}/{name}", blob)


def test_plain_archive_passes_the_check_and_runs(archive, tmp_path, monkeypatch):
    check_pt2(archive)
    monkeypatch.chdir(tmp_path)
    np.save("s.npy", np.random.rand(2, 1, 10, 12).astype("float32"))
    assert cli.main(["explain", "--model", str(archive), "--input", "s.npy", "--out", "o", "--max-pictures", "0"]) == 0


@pytest.mark.parametrize("how", ["plain-pickle", "torch-save-of-object"])
def test_crafted_sample_inputs_pickle_never_runs(archive, tmp_path, capsys, monkeypatch, how):
    marker = tmp_path / "pwned"
    if how == "plain-pickle":
        payload = pickle.dumps(Marker(marker))
    else:
        buf = io.BytesIO()
        torch.save({"x": Marker(marker)}, buf)
        payload = buf.getvalue()
    bad = tmp_path / "bad.pt2"
    rewrite(archive, bad, replace={"sample_inputs/model.pt": payload})
    monkeypatch.chdir(tmp_path)
    np.save("s.npy", np.random.rand(2, 1, 10, 12).astype("float32"))
    assert cli.main(["explain", "--model", str(bad), "--input", "s.npy", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "refusing" in err and "sample_inputs/model.pt" in err and "run code" in err
    assert not marker.exists()
    with pytest.raises(InputError, match="unrestricted unpickler"):
        load_model(str(bad))
    assert not marker.exists()
    # the attack is real: torch.export.load itself would have run the payload
    try:
        torch.export.load(str(bad))
    except Exception:
        pass
    assert marker.exists()


@pytest.mark.parametrize("entry, why", [("data/constants/custom_obj_0", "custom or opaque pickled object"),
                                        ("data/aotinductor/model/model.so", "compiled code"),
                                        ("data/weights/model.pt", "legacy pickled"),
                                        ("payload.pkl", "not part of a plain torch.export archive")])
def test_archive_entries_that_would_run_code_are_refused(archive, tmp_path, entry, why):
    bad = tmp_path / "bad.pt2"
    rewrite(archive, bad, add={entry: pickle.dumps(Marker(tmp_path / "pwned"))})
    with pytest.raises(InputError, match=why):
        check_pt2(bad)
    assert not (tmp_path / "pwned").exists()


def test_use_pickle_weight_with_a_crafted_payload_is_refused(archive, tmp_path):
    import json

    with zipfile.ZipFile(archive) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        cfg = json.loads(z.read(name))
    key = next(iter(cfg["config"]))
    cfg["config"][key]["use_pickle"] = True
    target = cfg["config"][key]["path_name"]
    bad = tmp_path / "bad.pt2"
    rewrite(archive, bad, replace={"model_weights_config.json": json.dumps(cfg).encode(),
                                   f"weights/{target}": pickle.dumps(Marker(tmp_path / "pwned"))})
    with pytest.raises(InputError, match="needs the unrestricted unpickler"):
        check_pt2(bad)
    assert not (tmp_path / "pwned").exists()


def test_not_a_zip_is_refused(tmp_path):
    (tmp_path / "x.pt2").write_bytes(pickle.dumps(Marker(tmp_path / "pwned")))
    with pytest.raises(InputError, match="not a zip"):
        load_model(str(tmp_path / "x.pt2"))
    assert not (tmp_path / "pwned").exists()


MYMODELS = '''
import torch
from torch import nn

def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()
'''


def test_factory_resolves_from_the_working_folder_like_the_installed_command(tmp_path):
    """The console script does not put the working folder on sys.path; ndcam must (as python -m does)."""
    (tmp_path / "mymodels_cwd.py").write_text(MYMODELS)
    np.save(tmp_path / "s.npy", np.random.rand(2, 2, 40).astype("float32"))
    code = ("import sys, os; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
            "from ndcam.app.cli import main\n"
            "raise SystemExit(main(['explain', '--model', 'mymodels_cwd:net', '--input', 's.npy', '--out', 'o',"
            " '--max-pictures', '0']))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "o" / "maps.npy").exists()
    assert str(tmp_path) not in sys.path


def test_state_dict_mismatch_lists_missing_and_unexpected_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels_sd.py").write_text(MYMODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import mymodels_sd

    state = mymodels_sd.net().state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["4.bias"]
    state["0.weight"] = torch.zeros(5, 2, 3)
    torch.save(state, "w.pt")
    np.save("s.npy", np.random.rand(2, 2, 40).astype("float32"))
    assert cli.main(["explain", "--model", "mymodels_sd:net", "--weights", "w.pt", "--input", "s.npy"]) == 2
    err = capsys.readouterr().err
    assert "missing keys: 4.bias" in err and "unexpected keys: extra.weight" in err
    assert "shape mismatch: 0.weight (5, 2, 3) vs model (4, 2, 3)" in err


def test_loading_an_archive_is_quiet(archive, capfd):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(str(archive))
    assert not caught, [str(w.message) for w in caught]
    assert capfd.readouterr().err == ""
