"""A user's files are never overwritten: ``--out`` must be new, empty, or a run of ours killed
before its first checkpoint; an unfinished run is continued only with ``--resume``; anything
else (a finished run, a run whose last.pt was deleted, the user's own files) is refused with
exit 2, naming what is there, and left byte for byte as it was, unless ``--overwrite``. The
same rule holds for ``fit(out=...)``, ``eval --json`` and the experiments' outputs."""

import hashlib
import json
import os
import shutil

import pytest

import fastadv
from fastadv.errors import TrainConfigError
from fastadv.experiments.__main__ import main as experiments_main
from test_train import run_cli
from test_fit import COMMON, digits_tensors, small_net

FAST = ["--dataset", "digits", "--width", "1", "--epochs", "1", "--batch-size", "64",
        "--steps", "1", "--eval-steps", "1", "--eval-examples", "32", "--no-progress"]
RUN_FILES = ["best.pt", "config.json", "last.pt", "metrics.jsonl", "results.json"]


def snapshot(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder)) if not name.startswith(".")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("finished") / "run")
    result = run_cli(*FAST, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def refused(out, *extra):
    before = snapshot(out)
    result = run_cli(*FAST, "--out", out, *extra)
    assert result.returncode == 2, result.stderr
    assert snapshot(out) == before  # nothing replaced, nothing added
    return result.stderr.strip().splitlines()[-1]


def test_a_users_files_named_like_ours_are_refused(tmp_path):
    """config.json, results.json, metrics.jsonl and best.pt of the user's, no last.pt: they
    were replaced (exit 0) before."""
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("config.json", "results.json", "metrics.jsonl", "best.pt"):
        (out / name).write_text(f"the user's {name}\n")
    line = refused(str(out))
    assert "already holds the files of a run, without its last.pt" in line
    assert "best.pt, config.json, metrics.jsonl, results.json" in line
    assert "--overwrite" in line


def test_a_lone_config_json_of_the_users_is_not_taken_for_a_killed_run(tmp_path):
    """A run killed before its first checkpoint holds only its config.json and starts again;
    a config.json of the user's is told apart by its contents, not its name."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"lr": 0.1, "note": "my experiment"}))
    line = refused(str(out))
    assert "files that are not a fastadv run (config.json)" in line
    line = refused(str(out), "--resume")
    assert "nothing to resume" in line and "config.json" in line


def test_a_finished_run_whose_last_pt_was_deleted_keeps_its_best_pt(tmp_path, finished):
    out = str(tmp_path / "run")
    shutil.copytree(finished, out)
    os.remove(os.path.join(out, "last.pt"))
    line = refused(out)
    assert "without its last.pt" in line


def test_a_finished_run_is_replaced_only_with_overwrite(tmp_path, finished):
    out = str(tmp_path / "run")
    shutil.copytree(finished, out)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    line = refused(out)
    assert "already holds a run, finished" in line and "--overwrite" in line
    assert "--resume and --overwrite" not in line
    result = run_cli(*FAST, "--out", out, "--resume", "--overwrite")
    assert result.returncode == 2 and "pass one of them" in result.stderr
    result = run_cli(*FAST, "--out", out, "--overwrite", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "--overwrite: removed" in result.stdout
    assert sorted(os.listdir(out)) == sorted(RUN_FILES + ["notes.txt"])
    assert open(os.path.join(out, "notes.txt")).read() == "mine"  # not ours: kept
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["seed"] == 1


def test_an_unfinished_run_is_continued_only_with_resume(tmp_path, finished):
    out = str(tmp_path / "run")
    shutil.copytree(finished, out)
    os.remove(os.path.join(out, "results.json"))
    line = refused(out)
    assert "already holds a run, unfinished" in line and "pass --resume" in line


def test_out_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    result = run_cli(*FAST, "--out", str(path))
    assert result.returncode == 2 and "is a file, not a directory" in result.stderr
    assert path.read_text() == "x"


def test_fit_follows_the_same_rule(tmp_path):
    x, y, _, _ = digits_tensors(200)
    out = tmp_path / "fit"
    out.mkdir()
    (out / "results.json").write_text("{}")
    kwargs = dict(COMMON, epochs=1)
    with pytest.raises(TrainConfigError, match="without its last.pt"):
        fastadv.fit(small_net(), (x, y), out=str(out), **kwargs)
    assert os.listdir(out) == ["results.json"] or sorted(os.listdir(out)) == [
        ".fastadv.lock", "results.json"]
    fastadv.fit(small_net(), (x, y), out=str(out), overwrite=True, **kwargs)
    assert set(RUN_FILES) <= set(os.listdir(out))
    with pytest.raises(TrainConfigError, match="already holds a run, finished"):
        fastadv.fit(small_net(), (x, y), out=str(out), **kwargs)


def test_experiment_outputs_are_replaced_only_with_overwrite(tmp_path, finished, capsys):
    prefix = str(tmp_path / "plot")
    assert experiments_main(["plot-run", finished, "--out", prefix]) == 0
    before = snapshot(tmp_path)
    assert experiments_main(["plot-run", finished, "--out", prefix]) == 2
    assert "already exist; pass --overwrite" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert experiments_main(["plot-run", finished, "--out", prefix, "--overwrite"]) == 0
    (tmp_path / "dir.json").mkdir()
    assert experiments_main(["plot-run", finished, "--out", str(tmp_path / "dir")]) == 2
    assert "is a directory" in capsys.readouterr().err


def run_eval(*args):
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"}
    return subprocess.run([sys.executable, "-m", "fastadv.eval", "--n-examples", "16",
                           "--attacks", "fgsm", "--no-sanity", "--no-curve", "--no-progress",
                           *args], capture_output=True, text=True, env=env, timeout=600)


def test_eval_json_follows_the_same_rule(tmp_path, finished):
    ckpt = os.path.join(finished, "best.pt")
    folder = tmp_path / "reports"
    folder.mkdir()
    # A folder as --json fails before evaluating: no folder.partial is left behind.
    result = run_eval("--checkpoint", ckpt, "--json", str(folder))
    assert result.returncode == 2 and "is a directory; give a file path" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["reports"]
    report = folder / "r.json"
    report.write_text("the user's report")
    result = run_eval("--checkpoint", ckpt, "--json", str(report))
    assert result.returncode == 2 and "already exists; pass --overwrite" in result.stderr
    assert report.read_text() == "the user's report"
    (folder / "r.json.partial").write_text("x")
    result = run_eval("--checkpoint", ckpt, "--json", str(report))
    assert result.returncode == 2 and "holds an unfinished evaluation" in result.stderr
    result = run_eval("--checkpoint", ckpt, "--json", str(report), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text())["checkpoint"] == ckpt
    assert not os.path.exists(str(report) + ".partial")


def test_a_run_killed_between_its_first_pending_best_and_last_pt_starts_again(tmp_path,
                                                                              finished):
    """Killed after writing best.pt.pending and before last.pt in epoch 1: that epoch was
    never committed, so the same command starts the run again (it is ours, unfinished)."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(finished, "config.json"), out / "config.json")
    shutil.copy(os.path.join(finished, "best.pt"), out / "best.pt.pending")
    (out / "metrics.jsonl").write_text("")
    result = run_cli(*FAST, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == sorted(RUN_FILES + [".fastadv.lock"]) or \
        sorted(os.listdir(out)) == sorted(RUN_FILES)
