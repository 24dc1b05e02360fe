"""``python -m fastadv.demo``: the fused ops inside a plain PGD loop, on real data.

Trains a small classifier on scikit-learn's bundled 8x8 digits (offline, seconds on a CPU),
then attacks it with PGD-10 from random starts, two restarts kept per example by
``keep_best_``, and prints clean and robust accuracy.
"""

import argparse
import time

import torch
import torch.nn.functional as F

import fastadv
from fastadv import backends
from fastadv.data import digits


def load(seed: int):
    """((x_train [1437, 1, 8, 8], y_train), (x_test [360, 1, 8, 8], y_test)): the digits split
    by `seed` (fastadv.data's "digits")."""
    x_train, y_train, x_test, y_test = digits.load(seed)
    return (x_train, y_train), (x_test, y_test)


def train(x, y, epochs=30):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def pgd_attack(model, x, y, *, eps, alpha, steps, restarts):
    """PGD with random starts; per example, the restart with the highest final loss."""
    best_x = x.clone()
    best_loss = torch.full((len(y),), -float("inf"))
    for _ in range(restarts):
        x_adv = fastadv.random_init_(torch.empty_like(x), x, eps=eps).requires_grad_()
        for _ in range(steps):
            loss = F.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            fastadv.pgd_(x_adv, grad, x, eps=eps, alpha=alpha)  # sign step + projection + clip
        with torch.no_grad():
            per_example = F.cross_entropy(model(x_adv), y, reduction="none")
        fastadv.keep_best_(best_x, best_loss, x_adv.detach(), per_example)
    return best_x


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load(args.seed)
    print(f"backend on cpu: {backends.select('cpu')} (python -m fastadv.info for details)")
    model = train(x_train, y_train)
    start = time.perf_counter()
    x_adv = pgd_attack(model, x_test, y_test, eps=args.eps, alpha=args.eps / 4, steps=10,
                       restarts=2)
    seconds = time.perf_counter() - start
    assert ((x_adv - x_test).abs() <= args.eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = (model(x_test).argmax(1) == y_test).float().mean().item()
        robust = (model(x_adv).argmax(1) == y_test).float().mean().item()
    print(f"digits test set ({len(y_test)} images), standard training:")
    print(f"  clean accuracy              {clean:6.1%}")
    print(f"  PGD-10 x 2 restarts, eps={args.eps:g} {robust:6.1%}   ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
