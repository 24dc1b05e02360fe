"""The attack benchmark: PGD-k images/s of fastadv.pgd against torchattacks.PGD and a plain
eager loop, measured in the same run on the same model and data, with the ablation of each
speed mechanic and the robust accuracy each attack leaves (it must not move).

    python -m benchmarks.attack --device cuda --model preact-resnet18 --batch 512
    python -m benchmarks.attack --device cpu --quick
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fastadv
from fastadv.data import synthetic
from fastadv.models import PreActResNet18, SmallCNN

from .common import report, time_fn

EPS, ALPHA = 8 / 255, 2 / 255


def synthetic_cifar(n: int, device, seed: int = 0):
    """Class-conditional 3x32x32 images in [0, 1] (fastadv.data.synthetic): a fixed random
    pattern per class plus noise, learnable in a few steps so that accuracy means something."""
    x, y = synthetic(n, (3, 32, 32), num_classes=10, seed=seed)
    return x.to(device), y.to(device)


def make_model(name: str, device):
    model = {"small-cnn": lambda: SmallCNN(in_channels=3, width=2, mean=(0.5,) * 3, std=(0.25,) * 3),
             "preact-resnet18": PreActResNet18}[name]()
    return model.to(device)


def fit(model, x, y, steps=30):
    """A few optimiser steps so the model is far from chance (the attack has work to do)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        idx = torch.arange(step * 64, (step + 1) * 64, device=x.device) % len(y)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def eager_pgd(model, x, y, steps, step_fn=None):
    """PGD as common public code writes it: fp32, the input gradient via loss.backward()
    (which also computes every weight gradient), the step as three eager kernels."""
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        grad = x_adv.grad
        x_adv = x_adv.detach()
        if step_fn is not None:
            step_fn(x_adv, grad, x)
        else:
            x_adv = x_adv + ALPHA * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    return x_adv


def implementations(model, steps: int, device):
    impls = {
        "eager loop (fp32, loss.backward)": lambda x, y: eager_pgd(model, x, y, steps),
        "+ fused op": lambda x, y: eager_pgd(
            model, x, y, steps, lambda xa, g, xn: fastadv.pgd_(xa, g, xn, eps=EPS, alpha=ALPHA)),
        "+ input-only grads": lambda x, y: fastadv.pgd(
            model, x, y, eps=EPS, alpha=ALPHA, steps=steps),
        "+ bf16 autocast, channels_last": lambda x, y: fastadv.pgd(
            model, x, y, eps=EPS, alpha=ALPHA, steps=steps, precision="bf16"),
    }
    if device.type == "cuda":
        impls["+ CUDA graph"] = lambda x, y: fastadv.pgd(
            model, x, y, eps=EPS, alpha=ALPHA, steps=steps, precision="bf16", cuda_graph=True)
    try:
        import torchattacks

        atk = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)
        impls = {"torchattacks.PGD": lambda x, y: atk(x, y), **impls}
    except ImportError:
        pass
    return impls


@dataclass(frozen=True)
class Row:
    model: str
    batch: int
    steps: int
    impl: str
    min_s: float
    median_s: float
    images_per_s: float
    speedup_vs_torchattacks: float | None
    speedup_vs_eager: float
    robust_accuracy: float
    clean_accuracy: float


def run(device, model_name: str, batch: int, steps: int, repeats: int) -> list[Row]:
    torch.manual_seed(0)
    x_train, y_train = synthetic_cifar(2048, device, seed=1)
    x, y = synthetic_cifar(batch, device, seed=2)
    model = fit(make_model(model_name, device), x_train, y_train)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    rows, times = [], {}
    for name, attack in implementations(model, steps, device).items():
        if "channels_last" in name:  # from here on (in place): the fastest settings use it
            model.to(memory_format=torch.channels_last)
        timing = time_fn(lambda: attack(x, y), device, repeats=repeats, warmup=1)
        x_adv = attack(x, y)
        with torch.no_grad():
            robust = (model(x_adv).argmax(1) == y).float().mean().item()
        times[name] = timing
        rows.append((name, timing, robust))
    base = times.get("torchattacks.PGD")
    eager = times["eager loop (fp32, loss.backward)"]
    return [Row(model_name, batch, steps, name, t.min_s, t.median_s, batch / t.min_s,
                None if base is None else base.min_s / t.min_s, eager.min_s / t.min_s,
                robust, clean) for name, t, robust in rows]


def markdown(rows: list[Row], env: dict) -> str:
    lines = [f"PGD attack throughput on {env['device']}, torch {env['torch']}, {env['date'][:10]}",
             "", "| model | batch | PGD | impl | images/s | vs torchattacks | vs eager loop "
             "| robust acc | clean acc |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ta = "—" if r.speedup_vs_torchattacks is None else f"{r.speedup_vs_torchattacks:.2f}×"
        lines.append(f"| {r.model} | {r.batch} | {r.steps} | {r.impl} | {r.images_per_s:.1f} "
                     f"| {ta} | {r.speedup_vs_eager:.2f}× | {r.robust_accuracy:.1%} "
                     f"| {r.clean_accuracy:.1%} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", action="append", choices=["small-cnn", "preact-resnet18"])
    parser.add_argument("--batch", type=int, help="default: 512 on CUDA, 64 on CPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small CNN, batch 32, 2 repeats")
    parser.add_argument("--json", help="write the results here (JSON)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    models = args.model or (["small-cnn"] if args.quick else ["small-cnn", "preact-resnet18"])
    batch = args.batch or (32 if args.quick else 512 if device.type == "cuda" else 64)
    repeats = 2 if args.quick else args.repeats
    rows = [row for name in models for row in run(device, name, batch, args.steps, repeats)]
    report("attack", device, rows, markdown, args.json)

if __name__ == "__main__":
    main()
