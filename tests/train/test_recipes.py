"""--recipe: a paper's group of defaults between the dataset's and the flags typed."""

import pytest

from fastadv.train.cli import config_from_args, cli_parser
from fastadv.train.config import DATASET_DEFAULTS, TrainConfig
from fastadv.train.recipes import RECIPES


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_sets_its_settings_on_every_dataset_kind(name):
    recipe = RECIPES[name]
    for dataset in ("digits", "cifar10", "mnist"):
        cfg = TrainConfig.for_dataset(dataset, recipe=name)
        assert cfg.recipe == name
        for key, value in recipe.for_dataset(dataset).items():
            assert getattr(cfg, key) == value, (dataset, key)
    digits = TrainConfig.for_dataset("digits", recipe=name)
    # Outside CIFAR-10 the dataset keeps its model, optimizer and epochs.
    for key in ("model", "optimizer", "epochs", "lr"):
        assert getattr(digits, key) == DATASET_DEFAULTS["digits"][key]
    assert digits.out == f"runs/digits-{name}"


def test_an_explicit_flag_wins_over_the_recipe_even_at_its_default_value():
    # --method pgd is the parser's default: typing it still overrides wong-fast's fgsm-rs.
    cfg = config_from_args(["--recipe", "wong-fast", "--method", "pgd", "--steps", "3"])
    assert (cfg.method, cfg.steps, cfg.schedule) == ("pgd", 3, "cyclic")
    cfg = config_from_args(["--recipe", "modern", "--ema", "0.9"])
    assert (cfg.ema, cfg.awp, cfg.method) == (0.9, 5e-3, "pgd")
    cfg = TrainConfig.for_dataset("cifar10", recipe="rice", epochs=3)
    assert (cfg.epochs, cfg.steps, cfg.schedule) == (3, 10, "piecewise")
    cfg = TrainConfig.for_dataset("digits", recipe="modern", awp=None)
    assert cfg.awp is None and cfg.ema == 0.995


def test_the_recipes_step_sizes_follow_their_methods():
    assert TrainConfig.for_dataset("digits", recipe="wong-fast").alpha == pytest.approx(0.25)
    assert TrainConfig.for_dataset("digits", recipe="n-fgsm").alpha == pytest.approx(0.2)
    assert TrainConfig.for_dataset("cifar10", recipe="madry").alpha == pytest.approx(2 / 255)


def test_help_lists_every_recipe_with_its_source_and_claim(capsys):
    text = cli_parser().format_help()
    for recipe in RECIPES.values():
        assert f"  {recipe.name}: " in text
    assert "Madry et al. 2018" in text and "not run by fastadv" in text
    with pytest.raises(SystemExit):
        config_from_args(["--recipe", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err
