"""The training benchmark: PGD-k adversarial training images/s of ``fastadv.train`` against a
plain eager loop as common public code writes it, on the same synthetic CIFAR-shaped data,
model and settings, measured in the same run, with the ablation of each speed mechanic and
the test robust accuracy each run ends with (it must not move beyond run-to-run noise).

    python -m benchmarks.train --device cuda --model preact-resnet18 --images 50000 --batch 512
    python -m benchmarks.train --device cpu --quick

Each implementation trains ``--epochs`` epochs (default 2) from the same initial weights; the
first epoch pays for warm-up (compilation, cuDNN autotuning, CUDA-graph capture) and is not
timed; the min and median epoch seconds of the others are reported, images/s from the min. Model FLOP utilisation uses the useful
FLOPs of PGD-k AT, (2k + 3) forward passes per image (each attack step is a forward and an
input-only backward, the weight update a forward and a full backward), from each model's
forward FLOPs counted by torch.utils.flop_counter; it is given against the device's dense
bf16 peak where that is known.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import fastadv
from fastadv.data import load_dataset, random_crop_flip
from fastadv.eval import clean_and_pgd_correct
from fastadv.models import build_model
from fastadv.train import TrainConfig, train

from .attack import compile_cell, compiled_implementations, eager_pgd
from .common import Report, device_name, graph_breaks, peak_tflops, selected_cases

COMPILED_EAGER = "torch.compile(eager loop: model + step)"

EPS, ALPHA = 8 / 255, 2 / 255


def forward_flops_per_image(model_name: str, shape=(3, 32, 32)) -> float:
    model = build_model(model_name, in_channels=shape[0], image_size=shape[1]).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(2, *shape))
    return counter.get_total_flops() / 2


# --------------------------------------------------------------------------- the baseline


def plain_loop(model_name, x_cpu, y_cpu, *, mean, std, batch, epochs, steps, device,
               fused_op=False, input_grad_only=False, compiled=False, seed=0):
    """PGD-AT as common public code writes it: data on the host, augmented there and copied
    to the device per batch; fp32; the attack in train mode with its input gradient from
    loss.backward() (which also computes every weight gradient); the step as eager kernels.
    fused_op: the step as fastadv.pgd_; input_grad_only: the attack as fastadv.pgd (still in
    train mode), input gradients only; compiled: the whole loop under torch.compile, the attack
    (model, input gradient and the eager step, weights frozen) as one compiled function and the
    weight update's forward through the compiled model (Inductor fuses the step formula
    itself: the baseline a torch.compile user has). The model normalises with mean/std, the
    data's channel statistics (as the trainer's does). Returns (model, seconds of each
    epoch); the first epoch holds the compilation."""
    torch.manual_seed(seed)
    model = build_model(model_name, mean=mean, std=std).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    step_fn = (lambda xa, g, xn: fastadv.pgd_(xa, g, xn, eps=EPS, alpha=ALPHA)) if fused_op \
        else None

    if compiled:
        compiled_attack = compiled_implementations(model, steps)[COMPILED_EAGER]
        train_model = torch.compile(model, dynamic=False)
    else:
        train_model = model

    def attack(x, y):
        if compiled:
            return compiled_attack(x, y)
        if input_grad_only:
            return fastadv.pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=steps, eval_mode=False)
        return eager_pgd(model, x, y, steps, step_fn)

    seconds = []
    n = len(y_cpu) // batch * batch
    for epoch in range(epochs):
        _sync(device)
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(y_cpu), generator=torch.Generator().manual_seed(epoch))
        for idx in order[:n].view(-1, batch):
            x = random_crop_flip(x_cpu[idx]).to(device)
            y = y_cpu[idx].to(device)
            x_adv = attack(x, y)
            loss = F.cross_entropy(train_model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return model.eval(), seconds


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def robust_accuracy(model, x, y, steps=10):
    """Clean and PGD-k (α = 2.5ε/k) accuracy, the same evaluation for every row."""
    clean, robust = clean_and_pgd_correct(model, x, y, eps=EPS, steps=steps)
    return clean / len(y), robust / len(y)


# --------------------------------------------------------------------------- fastadv levels


def fastadv_levels(device: torch.device, compile_on_cpu: bool) -> dict:
    """The ablation: each level adds one mechanic to the one before."""
    # Like the plain loop, the attack runs with BatchNorm in train mode (batch statistics);
    # only the CUDA graph needs eval mode (fastadv's default), and its row says so.
    levels = {
        "+ data and augmentation on device (fastadv.train fp32)": {"attack_bn": "train"},
        "+ bf16 autocast, channels_last": {"attack_bn": "train", "precision": "bf16",
                                           "channels_last": True},
    }
    if device.type == "cuda" or compile_on_cpu:
        levels["+ torch.compile"] = {"attack_bn": "train", "precision": "bf16",
                                     "channels_last": True, "compile": True}
    if device.type == "cuda":
        levels["+ CUDA graph (attack, eval-mode BN)"] = {
            "attack_bn": "eval", "precision": "bf16", "channels_last": True, "compile": True,
            "cuda_graph": True}
    return levels


def run_trainer(model_name, *, images, test_images, batch, epochs, steps, device, options,
                seed=0):
    """fastadv.train on synthetic CIFAR-shaped data; returns (every epoch's metrics, the
    model of the last checkpoint)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(dataset="synthetic", model=model_name, method="pgd", eps=EPS,
                          alpha=ALPHA, steps=steps, epochs=epochs, batch_size=batch,
                          optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="constant",
                          device=str(device), seed=seed, out=os.path.join(out, "run"),
                          eval_every=10**9, eval_steps=1, eval_examples=1, val_size=1,
                          synthetic_train=images + 1, synthetic_test=test_images,
                          progress=False, **options)
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg)
        with open(os.path.join(cfg.out, "metrics.jsonl")) as f:
            epochs_metrics = [json.loads(line) for line in f]
        model = fastadv.load_model(os.path.join(cfg.out, "last.pt"), device)
    return epochs_metrics, model


# --------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class Row:
    model: str
    images: int
    batch: int
    steps: int
    impl: str
    epoch_seconds: float  # min over the timed epochs (all but the first)
    epoch_seconds_median: float
    images_per_s: float  # from the min
    speedup_vs_plain: float
    tflops: float
    mfu_bf16: float | None
    clean_accuracy: float
    robust_accuracy: float
    compile_s: float | None = None  # torch.compile rows: first epoch minus the fastest
    graph_breaks: int | None = None  # torch.compile rows: > 0 means not compiled whole


def run(device, model_name: str, images: int, batch: int, steps: int, epochs: int,
        compile_on_cpu: bool = False, device_name: str = "",
        compile_rows: bool | None = None, on_row=None) -> list[Row]:
    """The suite's rows for one model, the plain loop first (every ratio's baseline);
    ``on_row(row)`` as each is measured."""
    # The trainer's synthetic data (seed 0: train stream 1, test stream 2), so every row
    # trains on the same images (the trainer holds one random image of images + 1 out for
    # validation, the plain loop the last) with the same channel statistics.
    data = load_dataset("synthetic", synthetic_train=images + 1,
                        synthetic_test=512 if device.type == "cuda" else 128)
    x_train, y_train = data.x_train[:images], data.y_train[:images]
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    useful = (2 * steps + 3) * forward_flops_per_image(model_name)
    timed = slice(1 if epochs > 1 else 0, None)
    n = len(y_train) // batch * batch
    plain_levels = {"plain eager loop (fp32, loss.backward, host data)": {},
                    "+ fused op": {"fused_op": True},
                    "+ input-only grads (fastadv.pgd)": {"input_grad_only": True}}
    if compile_rows is None:  # on a CPU the small CNN only: Inductor takes minutes on larger ones
        compile_rows = (device.type == "cuda" or compile_on_cpu) or model_name == "small-cnn"
    # The compiled plain loop runs last: its cold compiles are the slowest, least telling part
    # (a run cut short by its time limit loses it first).
    plain_compiled = ({"torch.compile(plain loop: attack + model, host data)": {"compiled": True}}
                      if compile_rows and epochs > 1 else {})
    peak = peak_tflops(device_name)
    rows = []

    def measured(name, seconds, model, compiled, breaks):
        clean, robust = robust_accuracy(model, x_test, y_test)
        ips = n / min(seconds[timed])
        base = ips if not rows else rows[0].images_per_s
        tflops = ips * useful / 1e12
        rows.append(Row(model_name, images, batch, steps, name, min(seconds[timed]),
                        statistics.median(seconds[timed]), ips, ips / base, tflops,
                        None if peak is None else tflops / peak, clean, robust,
                        seconds[0] - min(seconds[timed]) if compiled else None,
                        breaks if compiled else None))
        if on_row is not None:
            on_row(rows[-1])

    def plain(levels):
        for name, options in levels.items():
            before = graph_breaks()
            model, seconds = plain_loop(model_name, x_train, y_train, mean=data.mean,
                                        std=data.std, batch=batch, epochs=epochs, steps=steps,
                                        device=device, **options)
            measured(name, seconds, model, options.get("compiled"), graph_breaks() - before)

    plain(plain_levels)
    levels = fastadv_levels(device, compile_on_cpu or bool(plain_compiled))
    for name, options in levels.items():
        before = graph_breaks()
        metrics, model = run_trainer(model_name, images=images, test_images=len(y_test),
                                     batch=batch, epochs=epochs, steps=steps, device=device,
                                     options=options)
        measured(name, [m["seconds"] for m in metrics], model, options.get("compile"),
                 graph_breaks() - before)
    plain(plain_compiled)
    return rows


def markdown(rows: list[Row], env: dict) -> str:
    lines = [f"PGD adversarial training throughput on {env['device']}, torch {env['torch']}, "
             f"{env['date'][:10]}", "",
             "| model | images | batch | PGD | impl | epoch s (min) | epoch s (median) "
             "| images/s | vs plain loop "
             "| TFLOP/s | MFU (bf16 peak) | clean acc | robust acc | compile s |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mfu = "—" if r.mfu_bf16 is None else f"{r.mfu_bf16:.1%}"
        lines.append(f"| {r.model} | {r.images} | {r.batch} | {r.steps} | {r.impl} "
                     f"| {r.epoch_seconds:.2f} | {r.epoch_seconds_median:.2f} "
                     f"| {r.images_per_s:.1f} | {r.speedup_vs_plain:.2f}× "
                     f"| {r.tflops:.3f} | {mfu} | {r.clean_accuracy:.1%} "
                     f"| {r.robust_accuracy:.1%} "
                     f"| {compile_cell(r.compile_s, r.graph_breaks)} |")
    return "\n".join(lines)


def cases(device: torch.device, quick: bool) -> list[dict]:
    """One dict of run() arguments per model. The CPU sizes keep a full CPU run to minutes;
    the GPU's are the DESIGN's (a CIFAR-sized epoch, batch 512, PGD-10)."""
    if quick:  # no torch.compile rows: compiling takes minutes here (CI runs --quick)
        return [dict(model_name="small-cnn", images=512, batch=64, steps=5, epochs=2,
                     compile_rows=False)]
    if device.type == "cuda":
        return [dict(model_name=m, images=50_000, batch=512, steps=10, epochs=2)
                for m in ("small-cnn", "preact-resnet18", "wrn-34-10")]
    # small-cnn: 4 epochs (3 timed), enough to converge, so the accuracy columns can be
    # compared; preact-resnet18 gets 8 optimizer steps here: throughput only.
    return [dict(model_name="small-cnn", images=2048, batch=128, steps=10, epochs=4),
            dict(model_name="preact-resnet18", images=128, batch=32, steps=10, epochs=2)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", action="append",
                        choices=["small-cnn", "preact-resnet18", "wrn-34-10"])
    parser.add_argument("--images", type=int, help="training images per epoch")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--steps", type=int, help="PGD steps of the training attack")
    parser.add_argument("--epochs", type=int, help="epochs per implementation (all but the "
                                                   "first timed: min and median)")
    parser.add_argument("--compile-on-cpu", action="store_true",
                        help="also time torch.compile on the CPU (minutes of compilation)")
    parser.add_argument("--quick", action="store_true", help="small CNN, 512 images, PGD-5")
    parser.add_argument("--json", help="write the results here (JSON)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = Report("train", device, markdown, args.json)
    for case in selected_cases(cases(device, args.quick), args):
        run(device, **case, compile_on_cpu=args.compile_on_cpu, device_name=device_name(device),
            on_row=results.add)
    results.finish()


if __name__ == "__main__":
    main()
