"""The pieces on top of Madry-era training: weight averaging (--ema), adversarial weight
perturbation (--awp), MART, label smoothing, N-FGSM and the catastrophic-overfitting check.
Each loss against a hand-written reference on a tiny model; each piece resumed exactly and
run on two gloo ranks."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastadv
from fastadv.checkpoint import load_checkpoint
from fastadv.train import distributed
from fastadv.train.awp import PROXY_LR, WeightPerturbation
from fastadv.train.cli import main
from fastadv.train.config import TrainConfig
from fastadv.train.ema import WeightAverage
from fastadv.train.methods import make_method
from fastadv.train.overfit import collapse_warning
from helpers import kill_group_mid_run
from test_faults import assert_same_run, killed_in_write
from test_train import read_metrics, run_cli, same_weights

TINY = ["--dataset", "digits", "--width", "1", "--epochs", "2", "--batch-size", "32",
        "--eval-steps", "2", "--eval-examples", "32", "--save-every", "5", "--no-progress"]
# One configuration per piece (and AWP on from the first epoch, so that it is exercised).
PIECES = {
    "ema-awp-pgd": ["--method", "pgd", "--steps", "2", "--ema", "0.9", "--awp", "5e-3",
                    "--awp-warmup", "0"],
    "mart-smoothing": ["--method", "mart", "--steps", "2", "--mart-beta", "3",
                       "--label-smoothing", "0.1"],
    "trades-awp": ["--method", "trades", "--steps", "2", "--awp", "5e-3", "--awp-warmup", "1"],
    "n-fgsm": ["--method", "n-fgsm", "--ema", "0.9"],
}


def tiny_model(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 3, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(3))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)]
    return nn.Sequential(*layers)


def tiny_batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 5, (n,), generator=g)


def method_for(model, **flags):
    cfg = TrainConfig.for_dataset("digits", eps=0.1, **flags)
    return make_method(cfg, model, model, torch.device("cpu"))


def forward_of(model):
    return lambda inputs: model(inputs).float()


# --------------------------------------------------------------------------- losses by hand


def smoothed_ce_by_hand(logits, y, smoothing):
    """(1 − s)·(−log p_y) + s·mean_k(−log p_k), per example, then the batch mean."""
    total = 0.0
    for row, label in zip(logits.tolist(), y.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        nll = [log_z - v for v in row]
        total += (1 - smoothing) * nll[label] + smoothing * sum(nll) / len(row)
    return total / len(y)


def test_pgd_and_trades_losses_take_label_smoothing():
    model = tiny_model()
    x, y = tiny_batch()
    x_adv = (x + 0.05).clamp(0, 1)
    pgd = method_for(model, method="pgd", label_smoothing=0.2)
    loss, _ = pgd.objective(forward_of(model), x, x_adv, y)
    assert loss.item() == pytest.approx(smoothed_ce_by_hand(model(x_adv), y, 0.2), rel=1e-5)

    trades = method_for(model, method="trades", label_smoothing=0.2, trades_beta=2.0)
    loss, _ = trades.objective(forward_of(model), x, x_adv, y)
    p_nat, p_adv = F.softmax(model(x), 1).tolist(), F.softmax(model(x_adv), 1).tolist()
    kl = sum(sum(p * math.log(p / q) for p, q in zip(pn, pa))
             for pn, pa in zip(p_nat, p_adv)) / len(y)
    expected = smoothed_ce_by_hand(model(x), y, 0.2) + 2.0 * kl
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mart_loss_matches_its_definition_written_out():
    """Wang et al.: CE(p', y) − log(1 − max_{k≠y} p'_k) + β·mean KL(p ‖ p')·(1 − p_y)."""
    model = tiny_model()
    with torch.no_grad():
        model[-1].weight.mul_(30)  # confident predictions: every term of the loss matters
    x, y = tiny_batch()
    x_adv = x.flip(0)
    mart = method_for(model, method="mart", mart_beta=3.0, label_smoothing=0.1)
    loss, logits = mart.objective(forward_of(model), x, x_adv, y)
    assert torch.equal(logits, model(x_adv))
    p_nat, p_adv = F.softmax(model(x), 1).tolist(), F.softmax(model(x_adv), 1).tolist()
    bce = smoothed_ce_by_hand(model(x_adv), y, 0.1)
    robust = 0.0
    for pn, pa, label in zip(p_nat, p_adv, y.tolist()):
        runner_up = max((p for k, p in enumerate(pa) if k != label))
        bce += -math.log(1.0001 - runner_up + 1e-12) / len(y)
        kl = sum(p * (math.log(p) - math.log(q + 1e-12)) for p, q in zip(pn, pa))
        robust += kl * (1.0000001 - pn[label]) / len(y)
    assert loss.item() == pytest.approx(bce + 3.0 * robust, rel=1e-5)
    assert mart.loss_parts["robust_kl"].item() == pytest.approx(robust, rel=1e-5)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_n_fgsm_is_noise_of_2_eps_then_one_eps_step_without_projection(clip):
    model = tiny_model()
    x, y = tiny_batch(32)
    eps = 0.1
    method = method_for(model, method="n-fgsm", **({} if clip is None else {"nfgsm_clip": clip}))
    assert method.alpha == eps  # de Jorge et al.'s step
    torch.manual_seed(5)
    start = x.clone()
    fastadv.random_init_(start, x, eps=2 * eps)  # the same Philox draw the method makes
    leaf = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(leaf), y), leaf)
    expected = (start + eps * grad.sign()).clamp(0, 1)
    if clip is not None:
        expected = torch.min(torch.max(expected, x - clip * eps), x + clip * eps)
    torch.manual_seed(5)
    got = method.adversarial(x, y)
    assert torch.equal(got, expected)
    reach = (got - x).abs().max().item()
    if clip is None:
        assert eps < reach <= 3 * eps + 1e-6  # beyond the ε-ball: no projection
    else:
        assert reach <= eps + 1e-6


def test_awp_moves_each_weight_tensor_by_gamma_times_its_norm_and_restores_it():
    """Wu et al.: one proxy SGD step (lr 0.01) up the loss; v = ‖w‖/‖w' − w‖·(w' − w) per
    tensor with more than one dimension; the model steps at w + γv, then γv is taken off."""
    model = tiny_model(bn=True)
    x, y = tiny_batch()
    before = copy.deepcopy(model.state_dict())
    gamma = 5e-3
    ctx = distributed.Context(rank=0, world_size=1, device=torch.device("cpu"))
    awp = WeightPerturbation(model, gamma, ctx)
    loss_of = lambda m: F.cross_entropy(m(x).float(), y)  # noqa: E731

    proxy = copy.deepcopy(model)
    (-loss_of(proxy)).backward()
    expected = {}
    for (name, w), p in zip(model.named_parameters(), proxy.parameters()):
        stepped = p.detach() - PROXY_LR * p.grad
        diff = stepped - w.detach()
        expected[name] = (w.detach() + gamma * w.norm() / diff.norm() * diff
                          if w.dim() > 1 else w.detach())
    awp.perturb(loss_of)
    moved = dict(model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(moved[name].detach(), value, rtol=1e-6, atol=1e-7)
        if moved[name].dim() > 1:
            relative = (moved[name] - before[name]).norm() / before[name].norm()
            assert relative.item() == pytest.approx(gamma, rel=1e-4)
    assert torch.equal(model[1].running_mean, before["1.running_mean"])  # buffers untouched
    awp.restore()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=1e-7)


def test_weight_average_follows_the_warm_up_decay_and_averages_bn_statistics():
    model = tiny_model(bn=True)
    avg = WeightAverage(model, decay=0.9)
    expected = {k: v.clone().double() for k, v in model.state_dict().items()}
    x, _ = tiny_batch()
    for t in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.train()(x)  # BatchNorm's running statistics move
        avg.update()
        d = min(0.9, (1 + t) / (10 + t))
        for k, v in model.state_dict().items():
            expected[k] = (v.double() if not v.is_floating_point() else
                           d * expected[k] + (1 - d) * v.double())
    for k, v in avg.module.state_dict().items():
        torch.testing.assert_close(v.double(), expected[k], rtol=1e-5, atol=1e-6)
    assert avg.module.state_dict()["1.num_batches_tracked"].item() == 30
    assert not avg.module.training and not any(p.requires_grad
                                               for p in avg.module.parameters())


def test_catastrophic_overfitting_is_a_fall_of_pgd_accuracy_under_a_working_own_attack():
    def rec(epoch, pgd, own):
        return {"epoch": epoch, "train_robust_acc": pgd, "train_own_attack_acc": own}
    healthy = [rec(1, 0.30, 0.40), rec(2, 0.42, 0.50)]
    assert collapse_warning(healthy, "fgsm-rs") is None
    weak = [rec(1, 0.10, 0.60), rec(2, 0.12, 0.70)]  # weak against PGD, but no fall
    assert collapse_warning(weak, "fgsm") is None
    fell = healthy + [rec(3, 0.02, 0.85)]
    warning = collapse_warning(fell, "fgsm-rs")
    assert "epoch 3" in warning and "2.0%" in warning and "85.0%" in warning
    assert "42.0%" in warning and "n-fgsm" in warning
    fell[-1]["overfit_warning"] = warning  # once per run
    assert collapse_warning(fell + [rec(4, 0.01, 0.9)], "fgsm-rs") is None
    # With --ema the trained weights' PGD accuracy is the one compared.
    ema = [{**rec(1, 0.9, 0.5), "raw_train_robust_acc": 0.4},
           {**rec(2, 0.9, 0.6), "raw_train_robust_acc": 0.05}]
    assert collapse_warning(ema, "fgsm") is not None


# --------------------------------------------------------------------------- runs


def test_ema_run_reports_both_weights_and_the_checkpoint_model_is_the_average(tmp_path):
    out = str(tmp_path / "run")
    result = run_cli(*TINY, "--steps", "2", "--ema", "0.9", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(os.path.join(out, "best.pt"))
    assert ckpt["ema"]["updates"] == ckpt["progress"]["global_step"]
    assert not same_weights(ckpt["model"], ckpt["raw_model"])
    records = read_metrics(out)
    assert all("raw_val_robust_acc" in r and "raw_train_robust_acc" in r for r in records)
    best = max(records, key=lambda r: r["val_robust_acc"])  # chosen by the average's
    assert ckpt["progress"]["best_epoch"] == best["epoch"]
    rows = {r["checkpoint"] for r in json.load(open(os.path.join(out, "results.json")))
            ["checkpoints"]}
    assert rows == {"best", "best-raw", "last", "last-raw"}
    assert "best-raw" in result.stdout
    # fastadv's loaders (and so fastadv.eval) read the averaged weights.
    loaded = fastadv.load_model(os.path.join(out, "best.pt"))
    assert same_weights({k: v.cpu() for k, v in loaded.state_dict().items()}, ckpt["model"])


@pytest.mark.parametrize("piece", list(PIECES))
def test_each_piece_resumes_exactly(tmp_path, piece):
    """Killed inside its third checkpoint write, resumed: the uninterrupted run's weights
    (averaged and raw), metrics and report."""
    args = [*TINY, *PIECES[piece]]
    whole = str(tmp_path / "whole")
    result = run_cli(*args, "--out", whole)
    assert result.returncode == 0, result.stderr[-2000:]
    out = str(tmp_path / "killed")
    code, _ = killed_in_write(5, [*args, "--out", out])
    assert code == -signal.SIGKILL
    result = run_cli(*args, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout
    assert_same_run(whole, out)
    raw = lambda d: load_checkpoint(os.path.join(d, "last.pt"))["raw_model"]  # noqa: E731
    if "--ema" in args:
        assert same_weights(raw(whole), raw(out))


@pytest.mark.parametrize("piece", ["ema-awp-pgd", "mart-smoothing", "n-fgsm"])
def test_each_piece_on_two_gloo_ranks_resumes_exactly_with_every_rank_alike(tmp_path, piece):
    """Two ranks (the trainer checks that every rank ends with the same weights, the average
    included), SIGKILLed mid-run and resumed under torchrun: the uninterrupted result."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "fastadv.train"]
    args = [*TINY, "--batch-size", "16", *PIECES[piece]]
    env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"}
    env["OMP_NUM_THREADS"] = "1"
    whole = str(tmp_path / "whole")
    result = subprocess.run([*torchrun, *args, "--out", whole], capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stdout

    killed = str(tmp_path / "killed")
    done = kill_group_mid_run([*torchrun, *args, "--out", killed], env,
                              os.path.join(killed, "last.pt"), 50)
    assert 0 < done < 2 * 80
    resumed = subprocess.run([*torchrun, *args, "--out", killed, "--resume"],
                             capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(whole, killed)


def test_single_step_runs_record_their_own_attack_and_best_pt_is_the_best_pgd_epoch(tmp_path):
    """The check's figure is recorded each evaluated epoch; best.pt is the epoch with the
    highest validation PGD accuracy, never one chosen by the single-step attack."""
    out = str(tmp_path / "run")
    result = run_cli(*TINY, "--method", "fgsm", "--epochs", "3", "--eps", "0.3", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    records = read_metrics(out)
    assert all(0 <= r["train_own_attack_acc"] <= 1 for r in records)
    best = max(records, key=lambda r: (r["val_robust_acc"], -r["epoch"]))
    assert load_checkpoint(os.path.join(out, "best.pt"))["progress"]["epoch"] == best["epoch"]


def test_a_collapse_warns_once_and_strict_stops_with_status_3(tmp_path, monkeypatch, capsys):
    """The loop's handling of a collapse (the detection itself is tested above): warned once
    on stderr and in metrics.jsonl and results.json; --strict stops after that epoch, exit 3;
    best.pt is still the best epoch under validation PGD."""
    import fastadv.train.loop as loop
    import fastadv.train.overfit as overfit
    fired = []

    def collapse_at_epoch_2(history, method):
        if history[-1]["epoch"] == 2 and not fired:
            fired.append(True)
            return "catastrophic overfitting at epoch 2: (test)"
        return None
    monkeypatch.setattr(loop, "collapse_warning", collapse_at_epoch_2)
    out = str(tmp_path / "run")
    code = main([*TINY, "--method", "fgsm-rs", "--epochs", "4", "--strict", "--out", out])
    assert code == 3
    err = capsys.readouterr().err
    assert err.count("catastrophic overfitting at epoch 2") == 1
    assert "--strict: catastrophic overfitting (epoch 2); stopping after epoch 2" in err
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert "overfit_warning" in records[1]
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["overfit"]["detected_at_epoch"] == 2
    best = max(records, key=lambda r: (r["val_robust_acc"], -r["epoch"]))
    assert load_checkpoint(os.path.join(out, "best.pt"))["progress"]["epoch"] == best["epoch"]
    assert overfit.overfit_record(records)["epoch"] == 2


def test_fit_takes_every_piece_and_returns_the_averaged_model(tmp_path):
    """fastadv.fit(ema=..., awp=..., method="mart", label_smoothing=...): the returned model
    holds best.pt's averaged weights; the raw ones are in the checkpoint."""
    from test_fit import COMMON, digits_tensors, small_net
    x, y, x_test, y_test = digits_tensors(200)
    out = str(tmp_path / "fit")
    result = fastadv.fit(small_net(), (x, y), test_data=(x_test, y_test), out=out,
                         **dict(COMMON, epochs=1), method="mart", ema=0.9, awp=5e-3,
                         awp_warmup=0, label_smoothing=0.1)
    ckpt = load_checkpoint(os.path.join(out, "best.pt"))
    assert ckpt["config"]["ema"] == 0.9 and ckpt["config"]["method"] == "mart"
    fitted = {k: v.cpu() for k, v in result.model.state_dict().items()}
    assert same_weights(fitted, ckpt["model"])
    assert not same_weights(fitted, ckpt["raw_model"])
    assert {r["checkpoint"] for r in result.summary["checkpoints"]} >= {"best", "best-raw"}
