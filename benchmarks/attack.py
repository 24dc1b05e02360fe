"""The attack benchmark: PGD-k images/s of fastadv.pgd against torchattacks.PGD and a plain
eager loop, measured in the same run on the same model and data, with the ablation of each
speed mechanic and the robust accuracy each attack leaves (it must not move); and the
evaluation attack, PGD-50 x 10 restarts, with restarts batched and early-stopped against
torchattacks.PGD restarted 10 times.

    python -m benchmarks.attack --device cuda --model preact-resnet18 --batch 512
    python -m benchmarks.attack --device cpu --quick

Model FLOP utilisation counts the useful FLOPs of PGD-k, 2k forward passes per image (each
step a forward and an input-only backward), from the model's counted forward FLOPs.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import fastadv
from fastadv.data import synthetic
from fastadv.models import CIFAR10_MEAN, CIFAR10_STD, PreActResNet18, SmallCNN, build_model

from .common import Report, device_name, graph_breaks, peak_tflops, selected_cases, time_fn

EPS, ALPHA = 8 / 255, 2 / 255


def synthetic_cifar(n: int, device, seed: int = 0):
    """Class-conditional 3x32x32 images in [0, 1] (fastadv.data.synthetic): a fixed random
    pattern per class plus noise, learnable in a few steps so that accuracy means something."""
    x, y = synthetic(n, (3, 32, 32), num_classes=10, seed=seed)
    return x.to(device), y.to(device)


MODELS = ("small-cnn", "preact-resnet18", "wrn-34-10")


def make_model(name: str, device):
    model = {"small-cnn": lambda: SmallCNN(in_channels=3, width=2, mean=(0.5,) * 3, std=(0.25,) * 3),
             "preact-resnet18": PreActResNet18,
             "wrn-34-10": lambda: build_model("wrn-34-10", mean=CIFAR10_MEAN, std=CIFAR10_STD)}[name]()
    return model.to(device)


def forward_flops_per_image(model) -> float:
    was_training = model.training
    x = torch.rand(2, 3, 32, 32, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    model.train(was_training)
    return counter.get_total_flops() / 2


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


def input_grad_fn(model, y):
    """x -> ∇ₓ CE(model(x), y), written so that Dynamo traces it whole on every supported
    torch (2.11's refuses x.requires_grad_() in a compiled function): torch.func.grad over
    functional_call, the buffers passed in, since BatchNorm in train mode updates them and a
    grad transform may not mutate a tensor it captured."""
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())

    def loss(x_adv, buffers):
        return F.cross_entropy(torch.func.functional_call(model, (params, buffers), (x_adv,)), y)

    grad = torch.func.grad(loss)
    return lambda x_adv: grad(x_adv, buffers)


def _input_grad_pgd(model, x, y, steps: int, step_fn=None):
    """The eager loop written so torch.compile can take all of it (input_grad_fn), no host
    sync, the formula or ``step_fn`` as the step."""
    input_grad = input_grad_fn(model, y)
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(steps):
        grad = input_grad(x_adv)
        if step_fn is not None:
            step_fn(x_adv, grad, x)
        else:
            x_adv = x_adv + ALPHA * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    return x_adv


def _fused_step(x_adv, grad, x_nat):
    fastadv.pgd_(x_adv, grad, x_nat, eps=EPS, alpha=ALPHA)


def compiled_implementations(model, steps: int) -> dict:
    """torch.compile of the whole loop (model, gradient, step): with the eager formula (which
    Inductor fuses itself) and with fastadv's step. The model's weights are frozen inside, as
    in fastadv.pgd, so only input gradients are computed. Their first call compiles: _time_case
    reports it as compile_s, apart from the steady state, with the graph breaks it counted (a
    row with any did not compile whole)."""
    frozen = [p for p in model.parameters() if p.requires_grad]

    def compiled(step_fn):
        fn = torch.compile(lambda m, x, y: _input_grad_pgd(m, x, y, steps, step_fn),
                           dynamic=False)

        def run(x, y):
            for p in frozen:
                p.requires_grad_(False)
            try:
                return fn(model, x, y)
            finally:
                for p in frozen:
                    p.requires_grad_(True)
        return run

    return {"torch.compile(eager loop: model + step)": compiled(None),
            "torch.compile(loop + fastadv.pgd_)": compiled(_fused_step)}


def implementations(model, steps: int, device, compile_rows: bool = False):
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
    if compile_rows:
        impls.update(compiled_implementations(model, steps))
    torchattacks = _torchattacks()
    if torchattacks is not None:
        atk = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)
        impls = {"torchattacks.PGD": lambda x, y: atk(x, y), **impls}
    return impls


def _torchattacks():
    """The torchattacks module, or None with a line saying its baseline rows are missing."""
    try:
        import torchattacks
    except ImportError as exc:
        print(f"torchattacks does not import ({exc}): no torchattacks.PGD rows", file=sys.stderr,
              flush=True)
        return None
    return torchattacks


def eval_implementations(model, steps: int, restarts: int, device, max_batch: int):
    """The evaluation attack, PGD-k x R restarts, worst case per example. fastadv batches
    restarts up to ``max_batch`` rows per pass: all 10 x 512 rows of WRN-34-10 would need
    ~170 GB of activations, and on a CPU rows beyond a few hundred fall out of cache."""
    alpha = 2.5 * EPS / steps
    impls = {}
    torchattacks = _torchattacks()
    if torchattacks is not None:
        atk = torchattacks.PGD(model, eps=EPS, alpha=alpha, steps=steps, random_start=True)

        def sequential(x, y):
            # Restart after restart, keeping for each example the first point that fools it.
            best = x.clone()
            robust = torch.ones(len(y), dtype=torch.bool, device=y.device)
            for _ in range(restarts):
                x_adv = atk(x, y)
                with torch.no_grad():
                    fooled = (model(x_adv).argmax(1) != y) & robust
                best[fooled] = x_adv[fooled]
                robust &= ~fooled
            return best

        impls[f"torchattacks.PGD x {restarts} restarts"] = sequential
    common = dict(eps=EPS, alpha=alpha, steps=steps, restarts=restarts, max_batch=max_batch)
    impls["fastadv.pgd, restarts batched"] = lambda x, y: fastadv.pgd(model, x, y, **common)
    impls["+ early stop"] = lambda x, y: fastadv.pgd(model, x, y, early_stop=True, **common)
    impls["+ bf16 autocast, channels_last"] = lambda x, y: fastadv.pgd(
        model, x, y, early_stop=True, precision="bf16", **common)
    return impls


@dataclass(frozen=True)
class Row:
    model: str
    batch: int
    steps: int
    restarts: int
    impl: str
    min_s: float
    median_s: float
    images_per_s: float
    speedup_vs_torchattacks: float | None
    speedup_vs_eager: float | None
    tflops: float | None  # useful FLOP/s of single-start PGD-k (2k forward passes per image)
    mfu_bf16: float | None
    robust_accuracy: float
    clean_accuracy: float
    compile_s: float | None = None  # the first call of a torch.compile row, not in min/median
    graph_breaks: int | None = None  # torch.compile rows: > 0 means not compiled whole


def _time_case(model, x, y, impls: dict, device, repeats: int):
    """Yields (name, timing, robust accuracy, compile s, graph breaks) as each attack is
    measured; from the first channels_last row on, the model stays channels_last (the fastest
    settings use it)."""
    model.to(memory_format=torch.contiguous_format)
    for name, attack in impls.items():
        if "channels_last" in name:
            model.to(memory_format=torch.channels_last)
        compile_s = breaks = None
        if name.startswith("torch.compile"):
            before = graph_breaks()
            start = time.perf_counter()
            attack(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compile_s = time.perf_counter() - start
            breaks = graph_breaks() - before
        timing = time_fn(lambda: attack(x, y), device, repeats=repeats, warmup=1)
        x_adv = attack(x, y)
        with torch.no_grad():
            robust = (model(x_adv).argmax(1) == y).float().mean().item()
        yield name, timing, robust, compile_s, breaks


def run(device, model_name: str, batch: int, steps: int, repeats: int, eval_steps: int = 50,
        eval_restarts: int = 10, max_batch: int | None = None,
        device_name: str = "", compile_rows: bool | None = None, on_row=None) -> list[Row]:
    """The suite's rows for one model; ``on_row(row)`` as each is measured (its ratio against
    a baseline measured after it is None there, and set in the rows returned)."""
    torch.manual_seed(0)
    x_train, y_train = synthetic_cifar(2048, device, seed=1)
    x, y = synthetic_cifar(batch, device, seed=2)
    model = fit(make_model(model_name, device), x_train, y_train)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    flops = 2 * steps * forward_flops_per_image(model)
    peak = peak_tflops(device_name)
    rows = []
    if compile_rows is None:  # on a CPU the small CNN only: Inductor takes minutes on larger ones
        compile_rows = device.type == "cuda" or model_name == "small-cnn"
    cases = [(steps, 1, implementations(model, steps, device, compile_rows),
              "eager loop (fp32, loss.backward)")]
    if eval_restarts:
        cases.append((eval_steps, eval_restarts,
                      eval_implementations(model, eval_steps, eval_restarts, device,
                                           max_batch or batch), None))
    for k, restarts, impls, eager_name in cases:
        results = {}

        def row(name, ta, eager):
            t, robust, compile_s, breaks = results[name]
            ips = batch / t.min_s
            tflops = ips * flops / 1e12 if restarts == 1 else None
            return Row(model_name, batch, k, restarts, name, t.min_s, t.median_s, ips,
                       None if ta is None else ta.min_s / t.min_s,
                       None if eager is None else eager.min_s / t.min_s, tflops,
                       None if tflops is None or peak is None else tflops / peak,
                       robust, clean, compile_s, breaks)

        ta = eager = None
        for name, *result in _time_case(model, x, y, impls, device, repeats):
            results[name] = result
            ta = result[0] if name.startswith("torchattacks") else ta
            eager = result[0] if name == eager_name else eager
            if on_row is not None:
                on_row(row(name, ta, eager))
        rows += [row(name, ta, eager) for name in results]
    model.to(memory_format=torch.contiguous_format)
    return rows


def _ratio(value):
    return "—" if value is None else f"{value:.2f}×"


def compile_cell(compile_s: float | None, breaks: int | None) -> str:
    """The compile-seconds cell, marked when the loop did not compile whole."""
    if compile_s is None:
        return ""
    return f"{compile_s:.1f}" + (f" (**{breaks} graph breaks: not whole**)" if breaks else "")


def markdown(rows: list[Row], env: dict) -> str:
    lines = [f"PGD attack throughput on {env['device']}, torch {env['torch']}, {env['date'][:10]}",
             "", "| model | batch | attack | impl | images/s | s per 1,000 images "
             "| vs torchattacks | vs eager loop | TFLOP/s | MFU (bf16 peak) | robust acc "
             "| clean acc | compile s |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        attack = f"PGD-{r.steps}" + (f" x {r.restarts}" if r.restarts > 1 else "")
        tflops = "—" if r.tflops is None else f"{r.tflops:.3f}"
        mfu = "—" if r.mfu_bf16 is None else f"{r.mfu_bf16:.1%}"
        lines.append(f"| {r.model} | {r.batch} | {attack} | {r.impl} | {r.images_per_s:.1f} "
                     f"| {1000 / r.images_per_s:.3g} | {_ratio(r.speedup_vs_torchattacks)} | {_ratio(r.speedup_vs_eager)} "
                     f"| {tflops} | {mfu} | {r.robust_accuracy:.1%} | {r.clean_accuracy:.1%} "
                     f"| {compile_cell(r.compile_s, r.graph_breaks)} |")
    return "\n".join(lines)


def cases(device: torch.device, quick: bool) -> list[dict]:
    """One dict of run() arguments per model. On the CPU the PGD-50 x 10 evaluation runs on
    the small CNN only (on PreActResNet-18 it would take most of an hour)."""
    if quick:
        # No torch.compile rows: compiling the two loops takes minutes here (CI runs --quick).
        return [dict(model_name="small-cnn", batch=32, steps=10, repeats=2, eval_steps=10,
                     eval_restarts=3, max_batch=64, compile_rows=False)]
    if device.type == "cuda":
        return [dict(model_name=m, batch=512, steps=10, repeats=5, eval_steps=50, eval_restarts=10,
                     max_batch=1024 if m == "wrn-34-10" else 5120) for m in MODELS]
    return [dict(model_name="small-cnn", batch=64, steps=10, repeats=3, eval_steps=50,
                 eval_restarts=10, max_batch=64),
            dict(model_name="preact-resnet18", batch=16, steps=10, repeats=2, eval_steps=50,
                 eval_restarts=0)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", action="append", choices=MODELS)
    parser.add_argument("--batch", type=int, help="default: 512 on CUDA, 64 on CPU")
    parser.add_argument("--steps", type=int, help="PGD steps of the training-style attack")
    parser.add_argument("--eval-steps", type=int, help="PGD steps of the evaluation attack")
    parser.add_argument("--eval-restarts", type=int, help="its restarts (0: skip it)")
    parser.add_argument("--max-batch", type=int, help="most rows per pass of batched restarts")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--quick", action="store_true",
                        help="small CNN, batch 32, PGD-10 x 3 evaluation, 2 repeats")
    parser.add_argument("--json", help="write the results here (JSON)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = Report("attack", device, markdown, args.json)
    rows = [row for case in selected_cases(cases(device, args.quick), args)
            for row in run(device, **case, device_name=device_name(device), on_row=results.add)]
    results.finish(rows)


if __name__ == "__main__":
    main()
