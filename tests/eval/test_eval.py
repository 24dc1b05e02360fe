"""python -m fastadv.eval and fastadv.evaluate on a digits model the trainer makes in the
fixture: a standard model collapses at eps=0.2 with a clean sanity report; gradient-masked
versions of it are flagged while the gradient-free Square attack still breaks them; the
report round-trips through JSON; resume after SIGKILL; bad input and missing torchattacks."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import fastadv
from fastadv.data import load_dataset
from fastadv import reference
from fastadv.eval import EvalReport, MissingDependency, evaluate, evaluation
from fastadv.eval.attacks import AttackError
from fastadv.eval.cli import main
from fastadv.eval.curve import eps_grid
from fastadv.eval.sanity import Evidence, black_box_weaker, doubling, iterative_vs_single_step
from helpers import same_report, torch_threads, trained_checkpoint

ALL_CHECKS = ["iterative-vs-single-step", "more-steps", "more-restarts", "eps-monotone",
              "large-eps", "black-box-weaker", "input-gradients", "perturbation-bounds"]
# Small budgets: the point is the tool's behaviour, in seconds on two CPU cores.
FAST = dict(steps=10, restarts=2, square_queries=100, batch_size=48, sanity_examples=96,
            curve_steps=10, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_thread):
    return trained_checkpoint(tmp_path_factory.mktemp("eval"), epochs=3)


@pytest.fixture(scope="module")
def model(checkpoint):
    return fastadv.load_model(checkpoint)


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", seed=0)  # the trainer's split for seed 0: test never trained on
    return data.x_test[:96], data.y_test[:96]


class QuantisedInput(nn.Module):
    """Rounds inputs to 5 levels before the model: torch.round has zero gradient, so every
    gradient attack is blind, while the decision still depends on the input."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


class SaturatedLogits(nn.Module):
    """Logits x 1e4: predictions unchanged, but softmax saturates to exactly one-hot in fp32,
    so the cross-entropy gradient vanishes on every correctly classified example."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) * 1e4


def correct(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def flags(bits: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in bits])


# --------------------------------------------------------------------------- the API


def test_standard_model_collapses_and_its_sanity_report_passes(model, digits):
    x, y = digits
    r = evaluate(model, x, y, eps=0.2, attacks=("fgsm", "pgd", "autoattack", "square"), **FAST)
    assert r.sanity_passed, r.table()
    assert [c.name for c in r.sanity] == ALL_CHECKS
    assert all(c.status == "pass" for c in r.sanity), r.table()  # every check ran

    clean = correct(model, x, y)
    assert r.clean_acc == pytest.approx(clean.float().mean().item())
    assert r.clean_acc > 0.85
    assert r.robust_acc < 0.10  # a standard model has no robustness at eps = 0.2
    # Per example, the worst case is the AND of clean and every attack.
    per = {k: flags(v) for k, v in r.per_example.items()}
    assert torch.equal(per["clean"], clean)
    worst = per["clean"].clone()
    for name in r.attacks:
        assert not (per[name] & ~per["clean"]).any()  # a wrong clean prediction is never robust
        assert r.attacks[name].robust_acc == pytest.approx(per[name].float().mean().item())
        worst &= per[name]
    assert torch.equal(per["worst_case"], worst)
    assert r.robust_acc == pytest.approx(worst.float().mean().item())
    assert r.robust_acc <= min(a.robust_acc for a in r.attacks.values())
    # FGSM's number is what fastadv.fgsm itself gives on the correctly classified examples.
    idx = clean.nonzero().squeeze(1)
    fooled_by_fgsm = ~correct(model, fastadv.fgsm(model, x[idx], y[idx], eps=0.2), y[idx])
    assert r.attacks["fgsm"].robust_acc == pytest.approx(
        (len(idx) - int(fooled_by_fgsm.sum())) / len(y))

    points = r.curve["points"]
    assert points[0] == {"eps": 0.0, "accuracy": pytest.approx(r.clean_acc)}
    assert points[-1]["accuracy"] == 0.0 and points[-1]["eps"] <= 0.4
    assert r.eps == 0.2 and r.threat_model == "Linf" and r.n_examples == len(y)


@pytest.mark.parametrize("masking", [QuantisedInput, SaturatedLogits])
def test_gradient_masked_model_is_flagged_and_square_still_breaks_it(model, digits, masking):
    x, y = digits
    r = evaluate(masking(model), x, y, eps=0.2, attacks=("fgsm", "pgd", "square"), **FAST)
    assert not r.sanity_passed, r.table()
    grads = r.check("input-gradients")
    assert grads.status == "warn" and grads.values["bad_fraction"] > 0.9
    assert r.check("black-box-weaker").status == "warn"
    # The gradient attacks report false security; the gradient-free one does not.
    pgd, square = r.attacks["pgd"].robust_acc, r.attacks["square"].robust_acc
    assert pgd > 0.6, r.table()
    assert square < pgd - 0.3, r.table()
    assert r.robust_acc <= square


def test_report_round_trips_through_json(model, digits, tmp_path):
    x, y = digits
    r = evaluate(model, x[:32], y[:32], eps=8 / 255, attacks="fgsm,pgd", steps=3, restarts=1,
                 batch_size=16, sanity_examples=16, curve_steps=3, progress=False)
    path = str(tmp_path / "r.json")
    r.save_json(path)
    again = EvalReport.load_json(path)
    assert again == r
    d = json.load(open(path))
    assert d["sanity"]["passed"] == r.sanity_passed
    assert {c["status"] for c in d["sanity"]["checks"]} <= {"pass", "warn", "skipped"}
    assert "8/255" in r.table()
    with pytest.raises(ValueError, match="not a fastadv evaluation report"):
        EvalReport.from_dict({"format": "something else"})


def test_attack_outside_the_ball_is_an_error_and_rounding_is_projected(model, digits,
                                                                       monkeypatch):
    x, y = digits
    monkeypatch.setattr(evaluation, "run_attack", lambda name, m, xb, yb, s, **kw:
                        (xb + 2 * s.eps).clamp(0, 1))
    with pytest.raises(AttackError, match="attack fgsm returned inputs up to 0.2 outside"):
        evaluate(model, x, y, eps=0.2, attacks="fgsm", progress=False, curve=False)

    # One ulp beyond the upper bound (fp32 rounding in someone else's attack): projected,
    # counted, and the check still passes.
    def ulp_out(name, m, xb, yb, s, **kw):
        _, hi = reference.combined_bounds(xb, s.eps, 0.0, 1.0)
        return torch.nextafter(hi, torch.tensor(2.0))

    monkeypatch.setattr(evaluation, "run_attack", ulp_out)
    r = evaluate(model, x, y, eps=0.2, attacks="fgsm", progress=False, curve=False)
    bounds = r.check("perturbation-bounds")
    assert bounds.status == "pass" and bounds.values["projected"] > 0
    assert 0 < bounds.values["max_violation"] <= 1e-6


def test_api_bad_input(model, digits):
    x, y = digits
    for kwargs, match in ((dict(eps=-0.1), "eps must lie in"), (dict(eps=1.5), "eps must lie in"),
                          (dict(eps=0.1, attacks=("pgd", "pgd")), "each attack once"),
                          (dict(eps=0.1, attacks="pgd,foo"), "unknown 'foo'"),
                          (dict(eps=0.1, steps=0), "steps must be"),
                          (dict(eps=0.1, batch_size=0), "batch_size must be"),
                          (dict(eps=0.1, precision="fp8"), "precision must be")):
        with pytest.raises(ValueError, match=match):
            evaluate(model, x, y, progress=False, **kwargs)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        evaluate(model, x * 255, y, eps=0.1, progress=False)
    with pytest.raises(ValueError, match="y must have shape"):
        evaluate(model, x, y[:-1], eps=0.1, progress=False)


def test_without_torchattacks_the_message_says_how_to_install(model, digits, checkpoint,
                                                              tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import torchattacks fails
    x, y = digits
    with pytest.raises(MissingDependency, match=r'pip install "fastadv\[eval\]"'):
        evaluate(model, x, y, eps=0.2, attacks=("pgd", "square"), progress=False)
    # fastadv's own attacks need no extra.
    r = evaluate(model, x[:16], y[:16], eps=0.2, attacks=("fgsm", "pgd"), steps=3,
                 restarts=1, sanity_runs=False, curve=False, progress=False)
    assert r.attacks["pgd"].robust_acc <= r.clean_acc

    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", checkpoint, "--json", str(out), "--no-progress"])  # default attacks
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'pip install "fastadv[eval]"' in err and "--attacks fgsm,pgd" in err
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------- the CLI


def test_cli_writes_report_and_plot_with_defaults_from_the_checkpoint(checkpoint, tmp_path,
                                                                      capsys):
    out, png = str(tmp_path / "r.json"), str(tmp_path / "curve.png")
    args = ["--checkpoint", checkpoint, "--n-examples", "64", "--attacks", "fgsm,pgd",
            "--steps", "5", "--restarts", "2", "--batch-size", "32", "--sanity-examples", "64",
            "--curve-steps", "5", "--json", out, "--plot", png, "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| **worst case** |" in printed and "| sanity check |" in printed

    d = json.load(open(out))
    for key in ("clean_acc", "robust_acc", "attacks", "eps", "threat_model", "norm",
                "n_examples", "dataset", "checkpoint", "settings", "versions", "device",
                "seconds", "sanity", "curve", "per_example"):
        assert key in d, key
    # Unset flags come from the checkpoint: digits, its training eps (0.2), its seed.
    assert d["dataset"] == "digits" and d["split"] == "test" and d["eps"] == pytest.approx(0.2)
    assert d["threat_model"] == "Linf" and d["n_examples"] == 64 and d["checkpoint"] == checkpoint
    assert d["attacks"]["pgd"]["settings"] == {
        "steps": 5, "restarts": 2, "alpha": pytest.approx(2.5 * 0.2 / 5), "loss": "ce",
        "random_start": True, "early_stop": True}
    assert d["versions"]["torch"] == str(torch.__version__)
    assert d["versions"]["fastadv"] == fastadv.__version__
    assert d["seconds"]["total"] > 0 and d["extra"]["training"]["method"] == "standard"
    assert d["robust_acc"] < 0.1 and d["clean_acc"] > 0.8
    assert EvalReport.from_dict(d).to_dict() == d

    # The curve: from 0 (clean accuracy), non-increasing (one example of slack: each radius
    # draws its own random start), ending at the first radius with accuracy 0.
    acc = [p["accuracy"] for p in d["curve"]["points"]]
    eps = [p["eps"] for p in d["curve"]["points"]]
    assert eps[0] == 0 and acc[0] == pytest.approx(d["clean_acc"])
    assert all(b <= a + 1 / 64 for a, b in zip(acc, acc[1:]))
    assert acc[-1] == 0 and all(a > 0 for a in acc[:-1])
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["curve.png", "r.json"]  # no partial, no temp file

    # eps as a fraction (the report replaced, as asked)
    assert main(["--checkpoint", checkpoint, "--n-examples", "16", "--attacks", "fgsm",
                 "--eps", "8/255", "--no-sanity", "--no-curve", "--no-progress",
                 "--json", out, "--overwrite"]) == 0
    assert json.load(open(out))["eps"] == pytest.approx(8 / 255)


def test_cli_strict_exits_3_when_a_check_warns(checkpoint, tmp_path, monkeypatch, capsys):
    from fastadv.eval import sanity

    out = str(tmp_path / "r.json")
    args = ["--checkpoint", checkpoint, "--n-examples", "32", "--attacks", "fgsm,pgd",
            "--steps", "5", "--restarts", "1", "--no-curve", "--sanity-examples", "32",
            "--no-progress", "--json", out, "--strict"]
    assert main(args) == 0  # the standard model's checks pass: --strict changes nothing
    monkeypatch.setattr(sanity, "GRADIENT_TOLERANCE", -1.0)  # any input gradient now "fails"
    assert main([*args, "--overwrite"]) == 3
    assert "input-gradients | WARN" in capsys.readouterr().out
    assert json.load(open(out))["sanity"]["passed"] is False  # the report is still written


@pytest.mark.parametrize("case", ["missing", "foreign-torch", "text", "negative-eps", "bad-eps",
                                  "bad-attack", "resume-without-json", "zero-examples",
                                  "plot-without-curve", "too-many-examples", "bad-device",
                                  "run-directory"])
def test_cli_bad_input_exits_with_a_clear_error_and_writes_nothing(case, checkpoint, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"
    out.mkdir()
    ckpt = checkpoint
    extra, flag = [], "--checkpoint"
    if case == "missing":
        ckpt, words = str(tmp_path / "nope.pt"), "does not exist"
    elif case == "foreign-torch":
        ckpt, words = str(tmp_path / "other.pt"), "not a fastadv checkpoint"
        torch.save({"weight": torch.zeros(3)}, ckpt)
    elif case == "text":
        ckpt, words = str(tmp_path / "notes.txt"), "is a text file, not a checkpoint"
        open(ckpt, "w").write("hello")
    elif case == "negative-eps":
        extra, flag, words = ["--eps", "-0.1"], "--eps", "must lie in [0, 1]"
    elif case == "bad-eps":
        extra, flag, words = ["--eps", "eight"], "--eps", "8/255"
    elif case == "bad-attack":
        extra, flag, words = ["--attacks", "pgd,cw"], "--attacks", "unknown 'cw'"
    elif case == "resume-without-json":
        extra, flag, words = ["--resume"], "--resume", "needs --json"
    elif case == "zero-examples":
        extra, flag, words = ["--n-examples", "0"], "--n-examples", "must lie in [1, "
    elif case == "bad-device":
        extra, flag, words = ["--device", "tpu:x"], "--device", "must be cpu, cuda or cuda:N"
    elif case == "run-directory":
        ckpt, words = os.path.dirname(checkpoint), "is a directory"
    elif case == "plot-without-curve":
        extra, flag, words = ["--plot", str(out / "p.png"), "--no-curve"], "--plot", "--no-curve"
    else:
        extra, flag, words = ["--n-examples", "100000"], "--n-examples", "exceeds"
    if "--json" not in extra and case != "resume-without-json":
        extra += ["--json", str(out / "r.json")]
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", ckpt, "--no-progress", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and words in err, err
    assert os.listdir(out) == []


def test_resume_after_sigkill_gives_the_same_results(checkpoint, tmp_path, capsys):
    args = ["--checkpoint", checkpoint, "--n-examples", "96", "--batch-size", "8",
            "--attacks", "fgsm,pgd", "--steps", "20", "--restarts", "3",
            "--sanity-examples", "48", "--curve-steps", "8", "--no-progress"]
    whole = str(tmp_path / "whole.json")
    assert main([*args, "--json", whole]) == 0

    killed = str(tmp_path / "killed.json")
    partial = killed + ".partial"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FASTADV_BACKEND", None)
    cmd = [sys.executable, "-m", "fastadv.eval", *args, "--json", killed]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not os.path.exists(partial) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the kill should land mid-run"
    assert os.path.exists(partial) and not os.path.exists(killed)
    done = len(torch.load(partial, weights_only=True)["units"])
    assert done >= 1

    # A resume must use the same settings, and a fresh run must not clobber the partial.
    with pytest.raises(SystemExit):
        main([*args, "--json", killed, "--resume", "--steps", "10"])
    err = capsys.readouterr().err
    assert "other settings" in err and "steps 20 -> 10" in err
    with pytest.raises(SystemExit):
        main([*args, "--json", killed])
    assert "--resume" in capsys.readouterr().err
    assert os.path.exists(partial)

    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert not os.path.exists(partial)
    same_report(whole, killed)


# --------------------------------------------------------------------------- pieces


def test_eps_grid():
    assert list(eps_grid(0.2)) == pytest.approx(
        [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.8, 1.0])
    grid = list(eps_grid(8 / 255))
    assert grid[0] == 0 and grid[-1] == 1.0 and len(grid) == 13
    assert grid[-2] == pytest.approx(128 / 255)
    assert all(a < b for a, b in zip(grid, grid[1:]))
    assert list(eps_grid(0.5)) == pytest.approx([0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75,
                                                 0.875, 1.0])


def test_check_thresholds():
    n = 200
    ev = Evidence(n=n, robust={"fgsm": 100, "pgd": 101, "square": 99})
    assert iterative_vs_single_step(ev).status == "pass"  # one example of slack
    ev.robust["pgd"] = 102
    assert iterative_vs_single_step(ev).status == "warn"
    assert black_box_weaker(ev).status == "pass"  # 99 vs min(100, 102): one example
    ev.robust["square"] = 90
    assert black_box_weaker(ev).status == "warn"
    base = dict(n=n, base=50, steps_base=10, steps_doubled=20, restarts_base=1,
                restarts_doubled=2)
    ev.doubling = {**base, "steps": 49, "restarts": 48}  # -0.5 pt, -1 pt
    assert [c.status for c in doubling(ev)] == ["pass", "warn"]
    assert iterative_vs_single_step(Evidence(n=n, robust={"pgd": 3})).status == "skipped"
