"""pytest-benchmark cases of the loading suite (``pytest benchmarks --benchmark-enable``); in
the ordinary test run the quick case trains once per row and its rows are checked."""

import pytest
import torch

from fastadv.data import load_dataset
from fastadv.data.folder import eval_transform, train_transform

from .common import device_name
from .conftest import DEVICES
from .loading import IN_MEMORY, PNGImages, cases, decode_ms_per_image, markdown, quantise, \
    run, streamed_impl, to_float

DEVICE = DEVICES[-1]  # the training cases run on the GPU when there is one


def pytest_generate_tests(metafunc):
    # As benchmarks/conftest.py does for the other suites: the full cases with
    # --benchmark-enable, the quick one otherwise.
    if "loading_case" in metafunc.fixturenames:
        quick = not metafunc.config.getoption("benchmark_enable", False)
        metafunc.parametrize("loading_case", cases(DEVICE, quick),
                             ids=lambda c: f"{c['model_name']}-{c['workers']}workers")


def test_png_items_are_the_in_memory_pixels():
    data = load_dataset("synthetic", synthetic_train=6, synthetic_test=1)
    pixels = quantise(data.x_train)
    plain = PNGImages(pixels, data.y_train, eval_transform(32))
    x = torch.stack([plain[i][0] for i in range(len(plain))])
    assert torch.equal(x, to_float(pixels))  # lossless: both paths see the same images
    assert [plain[i][1] for i in range(len(plain))] == data.y_train.tolist()
    augmented = PNGImages(pixels, data.y_train, train_transform(32, "pad-crop"))
    assert augmented[0][0].shape == (3, 32, 32) and decode_ms_per_image(augmented, 8) > 0


def test_png_images_rejects_float_images():
    with pytest.raises(ValueError, match=r"x must be uint8 images \[N, 3, H, W\]"):
        PNGImages(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), None)


def test_loading_rows(benchmark, loading_case):
    rows = benchmark.pedantic(run, args=(DEVICE,),
                              kwargs=dict(**loading_case, device_name=device_name(DEVICE)),
                              rounds=1, iterations=1)
    workers = loading_case["workers"]
    assert [r.impl for r in rows] == [IN_MEMORY, streamed_impl(workers), streamed_impl(0)]
    assert [r.workers for r in rows] == [0, workers, 0]
    assert rows[0].ratio_vs_in_memory == 1.0
    batches = loading_case["images"] // loading_case["batch"]
    for r in rows:
        assert (r.model, r.images, r.batch, r.steps) == (
            loading_case["model_name"], loading_case["images"], loading_case["batch"],
            loading_case["steps"])
        assert r.epoch_seconds > 0 and r.decode_ms_per_image > 0
        # images/s is the trainer's, over the whole batches of one epoch
        assert r.images_per_s == pytest.approx(batches * r.batch / r.epoch_seconds, rel=1e-6)
        assert r.ratio_vs_in_memory == pytest.approx(r.images_per_s / rows[0].images_per_s)
    assert len({r.decode_ms_per_image for r in rows}) == 1  # measured once, at setup
    table = markdown(rows, {"device": "test", "torch": torch.__version__, "date": "2026-01-01"})
    assert f"streamed/in-memory = {rows[1].ratio_vs_in_memory:.0%} (target >= 90%)" in table
    assert len(table.splitlines()) == 4 + len(rows) + 2  # title, blank, header, rule, verdict
