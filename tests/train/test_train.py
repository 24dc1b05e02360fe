"""python -m fastadv.train end to end on real (digits) and synthetic data: every method, the
run directory, checkpoints, resume after SIGKILL, two-process DDP, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fastadv
from fastadv.checkpoint import load_checkpoint, save_atomic
from fastadv.data import load_dataset
from fastadv.train.cli import main
from fastadv.cli_common import number
from fastadv.train.schedule import lr_factor
from helpers import kill_group_mid_run

FAST = ["--dataset", "digits", "--width", "1", "--epochs", "2", "--steps", "3",
        "--eval-steps", "3", "--eval-examples", "64", "--no-progress"]


def run_cli(*args, **kwargs):
    env = {**os.environ, **kwargs.pop("env", {})}
    env.pop("FASTADV_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "fastadv.train", *args], capture_output=True,
                          text=True, env=env, timeout=600, **kwargs)


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(path):
    return load_checkpoint(path)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("method", ["pgd", "fgsm", "fgsm-rs", "free", "trades", "standard"])
def test_every_method_trains_on_digits(tmp_path, method):
    out = str(tmp_path / method)
    fast = list(FAST)
    if method in ("fgsm", "fgsm-rs"):  # one step: --steps does not apply
        del fast[fast.index("--steps"):fast.index("--steps") + 2]
    assert main([*fast, "--method", method, "--out", out, "--free-replays", "2"]) == 0
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["loss"] > 0 and r["images_per_s"] > 0 and r["seconds"] > 0
        for key in ("train_clean_acc", "train_robust_acc", "val_clean_acc", "val_robust_acc"):
            assert 0.0 <= r[key] <= 1.0
        assert r["val_robust_acc"] <= r["val_clean_acc"] + 1 / 144 * 8  # attack hurts
    assert records[-1]["val_clean_acc"] > 0.3  # learning, far above chance (10 %)
    if method == "trades":  # its two terms, logged next to the total (beta = 6)
        for r in records:
            parts = r["loss_parts"]
            assert r["loss"] == pytest.approx(parts["natural_ce"] + 6.0 * parts["robust_kl"])
    else:
        assert all("loss_parts" not in r for r in records)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["method"] == method and config["eps"] == pytest.approx(0.2)
    results = json.load(open(os.path.join(out, "results.json")))
    assert {r["checkpoint"] for r in results["checkpoints"]} == {"best", "last"}

    # load_model gives back the trained model: its test accuracy is the one reported.
    model = fastadv.load_model(os.path.join(out, "last.pt"))
    assert not model.training
    data = load_dataset("digits", seed=0)
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).sum().item() / len(data.y_test)
    last = next(r for r in results["checkpoints"] if r["checkpoint"] == "last")
    assert acc == pytest.approx(last["test_clean_acc"], abs=1e-9)


def test_free_training_moves_its_perturbation():
    """Each replay's backward leaves the input gradient; δ takes one signed α step on it."""
    from fastadv.models import build_model
    from fastadv.train import TrainConfig
    from fastadv.train.methods import make_method

    cfg = TrainConfig.for_dataset("digits", method="free", free_replays=3)
    data = load_dataset("digits", seed=0)
    model = build_model("small-cnn", in_channels=1, image_size=8, width=1)
    method = make_method(cfg, model, model, torch.device("cpu"))
    x, y = data.x_train[:32], data.y_train[:32]
    deltas = []
    for loss, _ in method.losses(x, y):
        model.zero_grad()
        loss.backward()
        deltas.append(method.delta)  # the δ of the previous replay, until the generator moves
    deltas.append(method.delta)
    assert len(deltas) == 4 and deltas[0].abs().max() == 0  # starts at zero
    for before, after in zip(deltas[1:], deltas[2:]):
        assert not torch.equal(before, after)
    assert 0 < deltas[-1].abs().max() <= cfg.eps + 1e-6
    assert ((x + deltas[-1]) >= 0).all() and ((x + deltas[-1]) <= 1).all()


def test_trades_inner_maximisation_raises_the_kl_inside_the_ball():
    import torch.nn.functional as F

    from fastadv.train import TrainConfig
    from fastadv.train.methods import make_method
    from digits_model import train_digits_cnn

    cfg = TrainConfig.for_dataset("digits", method="trades", steps=10)
    model, x, _ = train_digits_cnn(epochs=5)
    method = make_method(cfg, model, model, torch.device("cpu"))
    x_adv = method.adversarial(x)

    def kl(points):
        with torch.no_grad():
            return F.kl_div(F.log_softmax(model(points), 1), F.softmax(model(x), 1),
                            reduction="batchmean").item()

    assert ((x_adv - x).abs() <= cfg.eps + 1e-6).all()
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert kl(x_adv) > 10 * kl((x + 0.001 * torch.randn_like(x)).clamp(0, 1)) + 1e-3


def test_pgd_training_is_robust_and_standard_is_not(tmp_path):
    """The paper's claim at toy size: same data, model and eps, only the training differs."""
    robust = {}
    for method in ("standard", "pgd"):
        out = str(tmp_path / method)
        assert main(["--dataset", "digits", "--epochs", "8", "--eval-examples", "200",
                     "--no-progress", "--method", method, "--out", out]) == 0
        results = json.load(open(os.path.join(out, "results.json")))
        robust[method] = results["checkpoints"][-1]["test_robust_acc"]
    assert robust["standard"] < 0.15 and robust["pgd"] > robust["standard"] + 0.3, robust


def test_synthetic_resnet_bf16_channels_last(tmp_path):
    """CIFAR's path (augmentation on the device, BatchNorm) with bf16 and channels_last."""
    out = str(tmp_path / "syn")
    assert main(["--dataset", "synthetic", "--synthetic-train", "96", "--synthetic-test", "16",
                 "--image-size", "32", "--val-size", "16", "--model", "preact-resnet18",
                 "--batch-size", "40", "--epochs", "1", "--steps", "1", "--eval-steps", "1",
                 "--eval-examples", "16", "--precision", "bf16", "--channels-last",
                 "--no-progress", "--out", out]) == 0
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert ckpt["config"]["precision"] == "bf16" and ckpt["progress"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    model = fastadv.load_model(os.path.join(out, "best.pt"))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_compile(tmp_path):
    out = str(tmp_path / "compiled")
    assert main([*FAST, "--epochs", "1", "--compile", "--out", out]) == 0
    assert read_metrics(out)[0]["val_clean_acc"] > 0.1


# --------------------------------------------------------------------------- resume


DIGITS_KILL = ["--dataset", "digits", "--width", "1", "--epochs", "3", "--batch-size", "16",
               "--steps", "5", "--eval-steps", "3", "--eval-examples", "64", "--save-every", "7",
               "--free-replays", "2"]  # 80 batches an epoch, a checkpoint every 7
# BatchNorm, augmentation on the device, restarts, an evaluation every other epoch: 6 batches
# an epoch, a checkpoint every 2.
RESNET_KILL = ["--dataset", "synthetic", "--synthetic-train", "112", "--synthetic-test", "16",
               "--val-size", "16", "--model", "preact-resnet18", "--batch-size", "16",
               "--epochs", "3", "--steps", "1", "--restarts", "2", "--eval-steps", "1",
               "--eval-examples", "16", "--eval-every", "2", "--save-every", "2"]


@pytest.mark.parametrize("method, args, total, kill_after", [
    ("pgd", DIGITS_KILL, 3 * 80, 100), ("free", DIGITS_KILL, 3 * 80, 100),
    ("trades", DIGITS_KILL, 3 * 80, 100), ("pgd", RESNET_KILL, 3 * 6, 7),
    # killed inside the eps ramp (2 epochs: 160 steps), resumed on it
    ("pgd", [*DIGITS_KILL, "--eps-warmup", "2"], 3 * 80, 100)],
    ids=["pgd", "free", "trades", "pgd-resnet-bn-augment-restarts", "pgd-eps-warmup"])
def test_resume_after_sigkill_gives_the_same_weights(tmp_path, method, args, total, kill_after):
    args = [*args, "--no-progress", "--method", method]
    whole = str(tmp_path / "whole")
    assert run_cli(*args, "--out", whole).returncode == 0

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "fastadv.train", *args, "--out", killed],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = os.path.join(killed, "last.pt")
    deadline, done = time.time() + 300, 0
    while done < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
        if os.path.exists(last):
            done = load_checkpoint(last)["progress"]["global_step"]
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the kill should land mid-run"
    done = load_checkpoint(last)["progress"]["global_step"]
    assert 0 < done < total

    resumed = run_cli(*args, "--out", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert same_weights(weights(os.path.join(whole, "last.pt")), weights(last))
    assert [r["epoch"] for r in read_metrics(killed)] == [1, 2, 3]
    assert [r["loss"] for r in read_metrics(killed)] == pytest.approx(
        [r["loss"] for r in read_metrics(whole)], rel=1e-9)
    assert [r.get("loss_parts") for r in read_metrics(killed)] == [
        None if "loss_parts" not in r else pytest.approx(r["loss_parts"], rel=1e-9)
        for r in read_metrics(whole)]


def test_resume_before_the_first_checkpoint_starts_over(tmp_path):
    out = str(tmp_path / "run")
    assert main([*FAST, "--epochs", "1", "--out", out]) == 0
    finished = weights(os.path.join(out, "last.pt"))
    os.remove(os.path.join(out, "last.pt"))
    # A run with results but no last.pt is not started again (it would lose them).
    refused = run_cli("--resume", "--out", out, "--no-progress")
    assert refused.returncode == 2 and "does not exist" in refused.stderr
    for name in ("best.pt", "results.json"):  # now as if killed in its first epoch
        os.remove(os.path.join(out, name))
    open(os.path.join(out, "metrics.jsonl"), "w").close()
    result = run_cli("--resume", "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "from the beginning" in result.stdout
    assert same_weights(finished, weights(os.path.join(out, "last.pt")))
    assert len(read_metrics(out)) == 1


def test_python_api_takes_the_dataset_defaults_and_checks_values(tmp_path):
    from fastadv.train import TrainConfig, TrainConfigError, train

    cfg = TrainConfig.for_dataset("cifar10", epochs=3, out=str(tmp_path / "c"))
    assert (cfg.model, cfg.steps, cfg.optimizer, cfg.epochs) == ("preact-resnet18", 10, "sgd", 3)
    assert cfg.eps == pytest.approx(8 / 255) and cfg.alpha == pytest.approx(2 / 255)
    assert TrainConfig.for_dataset("mnist").model == "madry-cnn"
    with pytest.raises(TypeError, match="unknown training flag.*epsilon"):
        TrainConfig.for_dataset("digits", epsilon=0.1)
    with pytest.raises(TrainConfigError, match="--eps must lie in"):
        TrainConfig.for_dataset("digits", eps=5.0)
    with pytest.raises(TrainConfigError, match="--dataset must be one of"):
        TrainConfig.for_dataset("cifar100")
    with pytest.raises(TrainConfigError, match="--optimizer must be one of sgd, adam"):
        TrainConfig.for_dataset("digits", optimizer="adamw")
    out = tmp_path / "bad"
    for bad in (dict(eps=5.0), dict(attack_bn="none"), dict(method="pgd2")):
        with pytest.raises(TrainConfigError):
            train(TrainConfig(**bad, out=str(out)))
    assert not out.exists()
    one_step = TrainConfig.for_dataset("digits", method="fgsm")
    assert (one_step.steps, one_step.eval_steps, one_step.alpha) == (1, 10, one_step.eps)


def test_resume_finished_run_and_changed_settings(tmp_path):
    out = str(tmp_path / "run")
    assert main([*FAST, "--epochs", "1", "--out", out]) == 0
    before = weights(os.path.join(out, "last.pt"))
    assert main(["--resume", "--out", out, "--no-progress"]) == 0  # nothing left: report only
    assert same_weights(before, weights(os.path.join(out, "last.pt")))
    assert len(read_metrics(out)) == 1

    bad = run_cli("--resume", "--out", out, "--eps", "0.1")
    assert bad.returncode != 0 and "--eps" in bad.stderr and "other settings" in bad.stderr
    # A flag typed with its parser default is still a change (the run used --width 1).
    bad = run_cli("--resume", "--out", out, "--seed", "0", "--precision", "bf16")
    assert bad.returncode != 0 and "--precision" in bad.stderr
    assert same_weights(before, weights(os.path.join(out, "last.pt")))


def test_pending_best_checkpoint_is_settled_on_resume(tmp_path):
    """A kill between writing best.pt.pending and committing last.pt: on resume the pending
    file becomes best.pt if last.pt reached its epoch, and is dropped otherwise."""
    from fastadv.train.rundir import settle_pending_best

    pending, best = str(tmp_path / "best.pt.pending"), str(tmp_path / "best.pt")
    for pending_epoch, last_epoch, kept in ((3, 3, True), (3, 2, False)):
        save_atomic({"format": "fastadv-checkpoint/1", "config": {}, "model_args": None,
                     "model": {}, "optimizer": {}, "scheduler": {}, "scaler": None,
                     "progress": {"epoch": pending_epoch, "step_in_epoch": 0,
                                  "global_step": 0, "best_score": 0.5, "best_epoch": 1,
                                  "history": []},
                     "ranks": [{}], "world_size": 1}, pending)
        settle_pending_best(pending, best, {"progress": {"epoch": last_epoch}})
        assert not os.path.exists(pending)
        assert os.path.exists(best) == kept
        if kept:
            assert load_checkpoint(best)["progress"]["epoch"] == 3
            os.remove(best)


# --------------------------------------------------------------------------- distributed


def test_two_process_ddp_on_cpu(tmp_path):
    out = str(tmp_path / "ddp")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "fastadv.train", *FAST, "--method", "trades", "--out", out],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stdout
    assert json.load(open(os.path.join(out, "config.json")))["world_size"] == 2
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["val_clean_acc"] > 0.3
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert len(ckpt["ranks"]) == 2  # both ranks' RNG states, for an exact resume
    # 1293 training images in batches of 64 (32 per rank): 20 steps an epoch.
    assert ckpt["progress"]["global_step"] == 40


def test_two_process_ddp_killed_and_resumed_gives_the_same_weights(tmp_path):
    """Every rank's RNG state, running sums and data shard come back: SIGKILL to the whole
    torchrun group mid-epoch, resume under torchrun, same weights as an uninterrupted run."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "fastadv.train"]
    # 1293 training images in batches of 16 (8 per rank): 80 steps an epoch.
    args = [*FAST, "--batch-size", "16", "--save-every", "5", "--method", "pgd"]
    env = {k: v for k, v in os.environ.items() if k != "FASTADV_BACKEND"}
    whole = str(tmp_path / "whole")
    result = subprocess.run([*torchrun, *args, "--out", whole], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    killed = str(tmp_path / "killed")
    last = os.path.join(killed, "last.pt")
    done = kill_group_mid_run([*torchrun, *args, "--out", killed], env, last, 50)
    assert 0 < done < 2 * 80, "the kill should land mid-run"

    resumed = subprocess.run([*torchrun, *args, "--out", killed, "--resume"],
                             capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert same_weights(weights(os.path.join(whole, "last.pt")), weights(last))
    assert [r["loss"] for r in read_metrics(killed)] == pytest.approx(
        [r["loss"] for r in read_metrics(whole)], rel=1e-9)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_atomic_write(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    assert main([*FAST, "--epochs", "1", "--out", out]) == 0
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    for key in ("model", "optimizer", "scheduler", "scaler", "progress", "ranks", "config",
                "model_args"):
        assert key in ckpt
    assert set(ckpt["ranks"][0]["rng"]) == {"python", "torch", "cuda"}
    model = fastadv.load_model(os.path.join(out, "last.pt"))
    assert same_weights(ckpt["model"], {k: v for k, v in model.state_dict().items()})

    # A save that dies half-way leaves the previous file untouched and no temp file.
    path = str(tmp_path / "x.pt")
    save_atomic({"a": 1}, path)

    def dying_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"a": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert os.listdir(tmp_path).count("x.pt") == 1 and not any(
        n.endswith(".tmp") for n in os.listdir(tmp_path))


def test_load_model_rejects_foreign_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastadv.load_model(str(tmp_path / "nope.pt"))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fastadv checkpoint"):
        fastadv.load_model(str(tmp_path / "other.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="is a text file, not a checkpoint"):
        fastadv.load_model(str(tmp_path / "junk.pt"))
    (tmp_path / "junk.pt").write_bytes(b"\x00\xff binary garbage")
    with pytest.raises(ValueError, match="not a fastadv checkpoint"):
        fastadv.load_model(str(tmp_path / "junk.pt"))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--eps", "1.5"], "--eps must lie in [0, 1]"),
    (["--eps=-8/255"], "--eps must lie in [0, 1]"),
    (["--eps", "eight"], "expected a number"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--width", "2", "--model", "preact-resnet18"], "--width applies to"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--method", "fgsm", "--alpha", "0.1"], "--alpha does not apply to --method fgsm"),
    (["--method", "fgsm-rs", "--steps", "5"], "--steps does not apply to --method fgsm-rs"),
    (["--method", "fgsm", "--restarts", "3"], "--restarts do not apply"),
    (["--dataset", "synthetic", "--image-size", "30", "--model", "madry-cnn"],
     "--model madry-cnn: madry-cnn needs an image size divisible by 4"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]))
def test_bad_flags_exit_nonzero_with_a_clear_message(tmp_path, args, message):
    out = tmp_path / "run"
    result = run_cli(*args, "--out", str(out))
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists()


def test_unwritable_out_and_missing_data_write_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("--out", str(blocker / "run"), "--epochs", "1")
    assert result.returncode == 2 and "not writable" in result.stderr

    out = tmp_path / "cifar-run"
    result = run_cli("--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"), "--out",
                     str(out))
    assert result.returncode == 2
    assert "--download" in result.stderr and "cifar-10" in result.stderr
    assert not out.exists()

    result = run_cli("--resume", "--out", str(tmp_path / "never"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_only_bad_input_becomes_exit_2_other_errors_keep_their_traceback(tmp_path, monkeypatch,
                                                                          capsys):
    from fastadv.train import PeerLost, RunStopped, TrainConfigError, cli

    def fails_with(exc):
        def train(cfg, **how):  # auto_resume, pass_on_sigterm
            raise exc
        return train

    monkeypatch.setattr(cli, "train", fails_with(TrainConfigError("--batch-size too big")))
    assert main([*FAST, "--out", str(tmp_path / "a")]) == 2
    assert "error: --batch-size too big" in capsys.readouterr().err
    # Ends on purpose, non-zero (torchrun restarts a group only when a worker fails).
    monkeypatch.setattr(cli, "train", fails_with(RunStopped("stopped by SIGTERM at ...")))
    assert main([*FAST, "--out", str(tmp_path / "a")]) == 143
    assert capsys.readouterr().err == "python -m fastadv.train: stopped by SIGTERM at ...\n"
    try:
        raise RuntimeError("Connection reset by peer")
    except RuntimeError:
        try:
            raise PeerLost("rank 0 (h): lost rank 1 (h, pid 7)") from None
        except PeerLost as exc:
            lost = exc
    monkeypatch.setattr(cli, "train", fails_with(lost))
    assert main([*FAST, "--out", str(tmp_path / "a")]) == 4
    assert capsys.readouterr().err == ("python -m fastadv.train: error: rank 0 (h): lost rank 1 "
                                       "(h, pid 7)\n")
    with pytest.raises(RuntimeError, match="Connection reset"):  # --debug: the transport's
        main([*FAST, "--out", str(tmp_path / "a"), "--debug"])
    monkeypatch.setattr(cli, "train", fails_with(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        main([*FAST, "--out", str(tmp_path / "b")])


def test_existing_run_is_not_overwritten(tmp_path):
    out = str(tmp_path / "run")
    assert main([*FAST, "--epochs", "1", "--out", out]) == 0
    before = weights(os.path.join(out, "last.pt"))
    result = run_cli(*FAST, "--out", out)
    assert result.returncode == 2 and "already holds a run, finished" in result.stderr
    assert "--overwrite" in result.stderr
    assert same_weights(before, weights(os.path.join(out, "last.pt")))


def test_help_documents_every_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--dataset", "--data-dir", "--download", "--model", "--method", "--eps",
                 "--alpha", "--steps", "--restarts", "--epochs", "--batch-size", "--lr",
                 "--schedule", "--precision", "--channels-last", "--compile", "--device",
                 "--seed", "--out", "--resume", "--eval-every", "--eval-steps", "--eps-warmup",
                 "--strict", "--no-verify", "idx:PATH", "fashion-mnist", "kmnist"):
        assert flag in result.stdout
    assert "cifar10: model=preact-resnet18" in result.stdout


# --------------------------------------------------------------------------- pieces


def test_number_accepts_fractions():
    assert number("8/255") == pytest.approx(8 / 255) and number("0.3") == 0.3


def test_schedules():
    assert [lr_factor("piecewise", t) for t in (0.0, 0.49, 0.5, 0.8)] == [1, 1, 0.1, 0.01]
    assert lr_factor("cyclic", 0.0) == 0 and lr_factor("cyclic", 0.4) == 1
    assert lr_factor("cyclic", 1.0) == 0 and lr_factor("cyclic", 0.7) == pytest.approx(0.5)
    assert lr_factor("cosine", 0.0) == 1 and lr_factor("cosine", 1.0) == pytest.approx(0)
    assert lr_factor("constant", 0.7) == 1
