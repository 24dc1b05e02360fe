"""The pytest-benchmark cases are benchmarks.run's: with ``--benchmark-enable`` every case of
the full suite on each device, otherwise (the ordinary test run) its quick cases, each executed
once as a smoke test."""

import torch

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    from . import attack, op, train

    quick = not metafunc.config.getoption("benchmark_enable", False)
    if "op_case" in metafunc.fixturenames:
        shapes = op.QUICK_SHAPES if quick else tuple(op.SHAPES)
        metafunc.parametrize("op_case", [(d, s) for d in DEVICES for s in shapes],
                             ids=lambda c: f"{c[0].type}-{c[1]}")
    device = DEVICES[-1]  # the attack and training cases run on the GPU when there is one
    for name, module in (("attack_case", attack), ("train_case", train)):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, module.cases(device, quick),
                                 ids=lambda c: c["model_name"], scope="module")
