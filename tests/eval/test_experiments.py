"""python -m fastadv.experiments at toy size on real (digits) runs: landscape (batched
restarts, its numbers and their nesting), capacity (the sweep, reuse of finished runs),
plot-run, and bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fastadv
from fastadv.data import load_dataset
from fastadv.experiments import main
from fastadv.experiments import capacity, landscape, plot_run
from fastadv.train.cli import main as train_main

TINY = ["--dataset", "digits", "--width", "1", "--epochs", "2", "--steps", "3",
        "--eval-steps", "3", "--eval-examples", "64", "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A standard and a PGD-trained tiny digits run: {method: run directory}."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("standard", "pgd"):
        out[method] = str(root / method)
        assert train_main([*TINY, "--method", method, "--out", out[method]]) == 0
    return out


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def read(path):
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- landscape


def test_landscape_cli_reports_the_spread_of_final_losses(runs, tmp_path, capsys):
    prefix = str(tmp_path / "land")
    ckpts = [os.path.join(runs[m], "best.pt") for m in ("standard", "pgd")]
    assert main(["landscape", "--checkpoint", ckpts[0], "--checkpoint", ckpts[1],
                 "--restarts", "64", "--examples", "2", "--max-batch", "24",
                 "--sequential-check", "4", "--no-progress", "--out", prefix]) == 0
    assert "restarts/s batched" in capsys.readouterr().out
    result = read(prefix + ".json")
    assert is_png(prefix + ".png")
    a = result["attack"]
    assert (a["eps"], a["steps"], a["restarts"], a["max_batch"]) == (pytest.approx(0.2), 3, 64,
                                                                      24)
    assert a["alpha"] == pytest.approx(2.5 * 0.2 / 3)

    # The examples are the first two test examples both models classify correctly.
    data = load_dataset("digits", seed=0)
    with torch.no_grad():
        ok = torch.ones(len(data.y_test), dtype=torch.bool)
        for c in ckpts:
            ok &= fastadv.load_model(c)(data.x_test).argmax(1) == data.y_test
    assert result["examples"]["indices"] == ok.nonzero().flatten()[:2].tolist()

    assert [m["method"] for m in result["models"]] == ["standard", "pgd"]
    for m in result["models"]:
        assert m["restarts_per_s"] > 0 and m["attack_seconds"] > 0
        seq = m["sequential"]
        assert seq["restarts"] == 4 and seq["restarts_per_s"] > 0
        assert seq["speedup"] == pytest.approx(seq["batched_restarts_per_s"]
                                               / seq["restarts_per_s"])
        for r in m["examples"]:
            q = list(r["quantiles"].values())
            assert list(r["quantiles"]) == ["p1", "p5", "p25", "p50", "p75", "p95", "p99"]
            assert r["min"] <= q[0] and q == sorted(q) and q[-1] <= r["max"]
            assert r["spread"] == pytest.approx(r["max"] - r["min"])
            assert r["min"] <= r["mean"] <= r["max"] and r["std"] >= 0
            # PGD from the ball never ends below the clean point's loss at its best.
            assert r["max"] >= r["clean_loss"]
            assert 0.0 <= r["fooled_fraction"] <= 1.0
            assert sum(r["histogram"]["counts"]) == 64
            assert len(r["histogram"]["edges"]) == len(r["histogram"]["counts"]) + 1
            best = [r["expected_best"][k] for k in sorted(r["expected_best"], key=int)]
            assert best == sorted(best) and best[-1] == pytest.approx(r["max"])
            assert best[0] == pytest.approx(r["mean"])


def test_more_restarts_never_lower_the_max(runs, tmp_path):
    """Nested design: the same seed and max_batch give a run with fewer restarts exactly a
    prefix of a longer run's restarts, so its best loss can only be matched or beaten."""
    ckpt = os.path.join(runs["pgd"], "best.pt")
    kw = dict(examples=2, steps=3, max_batch=16, seed=7, progress=False)
    small, losses_small, _ = landscape.run([ckpt], restarts=24, **kw)  # 16 + a partial 8
    large, losses_large, images = landscape.run([ckpt], restarts=64, **kw)
    assert losses_small.shape == (1, 2, 24) and losses_large.shape == (1, 2, 64)
    torch.testing.assert_close(losses_small, losses_large[..., :24], rtol=1e-5, atol=1e-6)
    for s, big in zip(small["models"][0]["examples"], large["models"][0]["examples"]):
        assert s["max"] <= big["max"]
        assert s["clean_loss"] == pytest.approx(big["clean_loss"])
    assert losses_large.std(dim=-1).min() > 0  # the starts are random: final losses differ
    other, losses_other, _ = landscape.run([ckpt], restarts=24, **{**kw, "seed": 8})
    assert not torch.allclose(losses_other, losses_small)

    # The figure: one image and one histogram per example, counts on a log axis.
    fig = landscape.plot(large, str(tmp_path / "l.png"), images)
    hists = [ax for ax in fig.axes if ax.patches]
    assert len(hists) == 2 and len(fig.axes) == 4 and is_png(str(tmp_path / "l.png"))
    assert all(ax.get_yscale() == "log" for ax in hists)


def test_landscape_bad_input(runs, tmp_path, capsys):
    missing = str(tmp_path / "nope.pt")
    assert main(["landscape", "--checkpoint", missing, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "does not exist" in err
    assert main(["landscape", "--out", str(tmp_path / "x")]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    ckpt = os.path.join(runs["pgd"], "best.pt")
    assert main(["landscape", "--checkpoint", ckpt, "--restarts", "0"]) == 2
    assert "--restarts must be an integer in [1, 2147483647], got 0" in capsys.readouterr().err
    assert main(["landscape", "--checkpoint", ckpt, "--dataset", "mnist"]) == 2
    assert "--dataset mnist" in capsys.readouterr().err
    assert main(["landscape", "--checkpoint", ckpt, "--indices", "0,99999"]) == 2
    assert "--indices" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.json")


# --------------------------------------------------------------------------- capacity


def test_capacity_sweep_at_toy_size(tmp_path, capsys):
    out = str(tmp_path / "cap")
    args = ["capacity", "--dataset", "digits", "--widths", "1,2", "--epochs", "2",
            "--steps", "2", "--eval-steps", "2", "--eval-restarts", "1", "--n-examples", "60",
            "--no-progress", "--out", out]
    assert main(args) == 0
    result = read(os.path.join(out, "capacity.json"))
    assert is_png(os.path.join(out, "capacity.png"))
    assert result["model"] == "madry-cnn" and result["widths"] == [1, 2]
    assert result["methods"] == ["standard", "fgsm", "pgd"]
    assert result["eval"]["examples"] == 60 and result["eval"]["steps"] == 2
    assert result["train"]["pgd_alpha"] == pytest.approx(2.5 * 0.2 / 2)
    rows = {(r["method"], r["width"]): r for r in result["rows"]}
    assert set(rows) == {(m, w) for m in result["methods"] for w in (1, 2)}
    for (method, width), r in rows.items():
        assert r["status"] == "trained" and r["epochs"] == 2
        assert 0 <= r["pgd_acc"] <= r["clean_acc"] + 2 / 60 and r["clean_acc"] <= 1
        assert r["train_loss"] > 0 and r["train_seconds"] > 0
        cfg = read(os.path.join(out, f"{method}-w{width}", "config.json"))
        assert (cfg["model"], cfg["width"], cfg["method"]) == ("madry-cnn", width, method)
    # The paper's width scaling: 2w/4w filters, 64w hidden units -> more parameters.
    assert rows[("pgd", 2)]["params"] > rows[("pgd", 1)]["params"]
    assert rows[("standard", 2)]["clean_acc"] > 0.3  # trained: far above chance (10 %)
    capsys.readouterr()

    # A second call never replaces the outputs unasked (nothing is trained first) ...
    before = open(os.path.join(out, "capacity.json")).read()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "capacity.json and" in err and "already exist; pass --overwrite" in err
    assert open(os.path.join(out, "capacity.json")).read() == before
    # ... and with --overwrite reuses the finished runs and evaluates them again, identically.
    args.append("--overwrite")
    assert main(args) == 0
    again = read(os.path.join(out, "capacity.json"))
    assert {r["status"] for r in again["rows"]} == {"reused"}
    assert [(r["clean_acc"], r["pgd_acc"]) for r in again["rows"]] == \
        [(r["clean_acc"], r["pgd_acc"]) for r in result["rows"]]
    # ... but not runs made with other settings.
    capsys.readouterr()
    assert main([*args, "--epochs", "3"]) == 2  # the last --epochs wins
    err = capsys.readouterr().err
    assert "--out" in err and "other settings" in err and "epochs" in err


def test_capacity_bad_input(tmp_path, capsys):
    out = str(tmp_path / "cap")
    for widths, message in (("1,x", "--widths must be comma-separated integers"),
                            ("0,2", "--widths values must be >= 1"),
                            ("", "--widths must list at least one integer")):
        assert main(["capacity", "--widths", widths, "--out", out]) == 2
        assert message in capsys.readouterr().err
    assert main(["capacity", "--methods", "pgd,adam", "--out", out]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main(["capacity", "--train-args", "--width 3", "--out", out]) == 2
    assert "--train-args: --width is set by the sweep" in capsys.readouterr().err
    assert main(["capacity", "--train-args", "--lr -1", "--out", out]) == 2
    assert "--lr must be > 0" in capsys.readouterr().err
    assert main(["capacity", "--epochs", "0", "--out", out]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert not os.path.exists(out)  # nothing written


# --------------------------------------------------------------------------- plot-run


def test_plot_run_draws_the_training_loss(runs, tmp_path, capsys):
    run = runs["pgd"]
    assert main(["plot-run", run]) == 0
    assert "saddle-point objective" in capsys.readouterr().out
    result = read(os.path.join(run, "run.json"))
    assert is_png(os.path.join(run, "run.png"))
    with open(os.path.join(run, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    c = result["curves"]
    assert c["epoch"] == [1, 2] and c["loss"] == [r["loss"] for r in metrics]
    assert c["val_robust_acc"] == [r["val_robust_acc"] for r in metrics]
    assert result["method"] == "pgd" and result["steps"] == 3
    assert result["loss_trend"]["first"] == metrics[0]["loss"]
    assert result["loss_trend"]["last"] == metrics[1]["loss"]
    assert result["test"] and {r["checkpoint"] for r in result["test"]} == {"best", "last"}
    fig = plot_run.plot(result, str(tmp_path / "again.png"))
    assert len(fig.axes) == 2 and is_png(str(tmp_path / "again.png"))

    prefix = str(tmp_path / "sub" / "curves")
    assert main(["plot-run", run, "--out", prefix]) == 0
    assert os.path.exists(prefix + ".json") and is_png(prefix + ".png")


def test_plot_run_draws_the_loss_terms_of_trades(tmp_path):
    run = tmp_path / "trades"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "trades", "dataset": "digits",
                                                 "model": "small-cnn", "eps": 0.2}))
    records = [{"epoch": e, "loss": 2.0 / e, "loss_parts": {"natural_ce": 1.0 / e,
                                                            "robust_kl": 0.5 / e}}
               for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["plot-run", str(run)]) == 0
    c = read(str(run / "run.json"))["curves"]
    assert c["loss_parts"] == {"natural_ce": [1.0, 0.5, 1 / 3], "robust_kl": [0.5, 0.25, 0.5 / 3]}
    assert is_png(str(run / "run.png"))


def test_plot_run_bad_input(tmp_path, capsys):
    assert main(["plot-run", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["plot-run", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["plot-run", str(tmp_path)]) == 2
    assert "has no metrics yet" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "loss": 1.0}\n{oops\n')
    assert main(["plot-run", str(tmp_path)]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run.json")


def test_command_line_exits_non_zero_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"}
    proc = subprocess.run([sys.executable, "-m", "fastadv.experiments", "plot-run",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"python -m fastadv.experiments plot-run: error: RUN {str(tmp_path)!r} has no "
        "metrics.jsonl: not a python -m fastadv.train run directory"]


def test_capacity_runs_take_the_dataset_defaults(tmp_path):
    """Each run's config comes from the trainer's parser: dataset defaults, madry-cnn at the
    width, alpha = 2.5 eps / steps for PGD when --steps is given, extra trainer flags."""
    out = str(tmp_path)
    cfg = capacity.train_config("mnist", "pgd", 4, out)
    assert (cfg.model, cfg.width, cfg.method, cfg.out) == ("madry-cnn", 4, "pgd",
                                                           os.path.join(out, "pgd-w4"))
    assert (cfg.eps, cfg.steps, cfg.alpha, cfg.epochs, cfg.eval_every) == (0.3, 40, 0.01, 80, 80)
    cfg = capacity.train_config("mnist", "pgd", 1, out, steps=20, epochs=3,
                                train_args=["--lr", "1e-3"])
    assert cfg.alpha == pytest.approx(2.5 * 0.3 / 20) and cfg.lr == 1e-3 and cfg.epochs == 3
    cfg = capacity.train_config("cifar10", "fgsm-rs", 2, out, eps=8 / 255)
    assert cfg.model == "madry-cnn" and cfg.alpha == pytest.approx(1.25 * 8 / 255)
    cfg = capacity.train_config("digits", "fgsm", 2, out, steps=5)  # one step of eps
    assert (cfg.alpha, cfg.steps, cfg.eval_steps) == (pytest.approx(0.2), 1, 5)
