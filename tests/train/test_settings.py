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


@pytest.mark.parametrize("argv, words", [
    (["--seed", "99999999999999999999999"], "--seed must lie in [0, 17592186044415]"),
    (["--seed", "-1"], "--seed must lie in [0, 17592186044415]"),
    (["--epochs", "10000000000000"], "--epochs must be at most 2147483647"),
    (["--width", "100000"], "--width must lie in [1, 1024]"),
    (["--image-size", "100000"], "--image-size must lie in [4, 16384]"),
    (["--lr", "1e400"], "argument --lr: '1e400' is too large for a float"),
    (["--resume", "--overwrite", "--out", "x"], "pass one of them"),
])
def test_out_of_range_flags_are_one_clear_line(argv, words, capsys, tmp_path, monkeypatch):
    """A huge --seed gave a traceback (an overflow in torch.manual_seed); every integer flag
    has a range, and a number too large for a float is named."""
    from fastadv.train.cli import config_from_args

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        config_from_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert words in err, err


@pytest.mark.parametrize("field, value, words", [
    ("eps", "0.1", "--eps must be a number, got '0.1' (str)"),
    ("steps", 2.5, "--steps must be an integer, got 2.5 (float)"),
    ("compile", 1, "--compile must be true or false, got 1 (int)"),
    ("lr", float("inf"), "--lr must be finite, got inf"),
    ("batch_size", True, "--batch-size must be an integer, got True (bool)"),
    ("model", 5, "--model must be a string, got 5 (int)"),
    ("dataset", None, "--dataset must be a string, got None (NoneType)"),
])
def test_a_crafted_config_gets_a_clear_error_not_a_type_error(field, value, words):
    """Settings read back from a file (a resume's config.json) are type-checked by the table."""
    cfg = TrainConfig(**{**TrainConfig().to_dict(), field: value})
    with pytest.raises(TrainConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        config.check(cfg)
