"""The table of training settings drives the parser, TrainConfig, the checks and fit()."""

import inspect

import pytest

import fastadv
from fastadv.train import config
from fastadv.train.config import SETTINGS, TrainConfig, TrainConfigError


def test_every_setting_is_a_field_and_a_flag_and_nothing_else():
    fields = list(TrainConfig.__dataclass_fields__)
    assert fields == [s.name for s in SETTINGS]
    parsed = vars(config.parser().parse_args([]))
    assert set(parsed) == set(fields)
    for s in SETTINGS:
        assert TrainConfig.__dataclass_fields__[s.name].default == s.default
        if not s.derived:
            assert parsed[s.name] == s.default, s.name


def test_fit_takes_every_setting_it_shares_with_the_command_line():
    """fit() keeps an explicit signature (editors show it): this fails when it drifts."""
    keywords = set(inspect.signature(fastadv.fit).parameters)
    shared = {s.name for s in SETTINGS if s.in_fit}
    assert shared <= keywords, sorted(shared - keywords)
    own = {"model", "train_data", "val_data", "test_data", "augment", "mean", "std"}
    assert keywords - shared == own


def test_each_rule_of_the_table_names_its_flag():
    for flag, value, message in (("steps", 0, "--steps must be >= 1, got 0"),
                                 ("momentum", 1.0, "--momentum must lie in [0, 1), got 1"),
                                 ("device", "tpu", "--device must be cpu, cuda or cuda:N, "
                                                   "got 'tpu'"),
                                 ("schedule", "linear", "--schedule must be one of piecewise, "
                                                        "cyclic, cosine, constant, got "
                                                        "'linear'")):
        with pytest.raises(TrainConfigError) as info:
            TrainConfig.for_dataset("digits", **{flag: value})
        assert str(info.value) == message


@pytest.mark.parametrize("method, eps, steps, dataset, alpha", [
    ("pgd", 8 / 255, 10, None, 2.5 * (8 / 255) / 10),
    ("pgd", 0.2, 10, config.DATASET_DEFAULTS["digits"], 0.05),
    ("pgd", 0.1, 10, config.DATASET_DEFAULTS["digits"], 0.05 * 0.1 / 0.2),
    ("pgd", 0.3, 40, config.DATASET_DEFAULTS["mnist"], 0.01),
    ("fgsm", 0.1, 1, config.DATASET_DEFAULTS["mnist"], 0.1),
    ("free", 0.1, 10, None, 0.1),
    ("fgsm-rs", 0.1, 1, None, 1.25 * 0.1),
])
def test_one_rule_for_the_default_alpha(method, eps, steps, dataset, alpha):
    assert config.default_alpha(method, eps, steps, dataset) == alpha


def test_the_command_line_and_fit_default_alpha_by_that_rule():
    assert TrainConfig.for_dataset("cifar10", eps=4 / 255).alpha == config.default_alpha(
        "pgd", 4 / 255, 10, config.DATASET_DEFAULTS["cifar10"])
    assert TrainConfig.for_dataset("digits", method="fgsm-rs", eps=0.1).alpha == 1.25 * 0.1
