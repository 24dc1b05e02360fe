"""--model specs: torchvision:NAME, timm:NAME and package.module:factory build any model for the
data, pretrained weights come only from the local cache, and every mistake is a ModelSpecError
that names the spec and the fix."""

import itertools
import os
import sys
import textwrap

import pytest
import torch
from torch import nn

from fastadv.model_specs import (ModelSpecError, Normalized, build_from_spec, check_model_output,
                                 check_spec_syntax, is_model_spec)
from fastadv.models import MODELS, Normalize

ZEROS = torch.zeros(2, 3, 24, 24)


def _logits(model, x=ZEROS):
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------------------- syntax

@pytest.mark.parametrize("text", ["torchvision:resnet18", "timm:resnet18.a1_in1k",
                                  "timm:hf-hub:timm/resnet18.a1_in1k", "mymodels:make",
                                  "pkg.sub.mod:Net_2", "torchvision.models:resnet18"])
def test_good_specs(text):
    assert is_model_spec(text)
    check_spec_syntax(text)


@pytest.mark.parametrize("text, match", [
    ("torchvision:", "names no model"), ("timm:", "names no model"),
    ("torchvision:resnet-18", "not a torchvision model name"),
    ("timm:bad name", "not a timm model name"),
    ("pkg.mod:", "names no factory"), ("pkg.mod:1make", "not a Python identifier"),
    ("pkg..mod:make", "not a module path"), ("my-models:make", "not a module path"),
    (":make", "not a module path"), ("tim-m:resnet18", "did you mean timm:resnet18"),
])
def test_bad_specs_are_specs_with_a_clear_error(text, match):
    assert is_model_spec(text)  # meant as a spec, so the CLI reports the syntax error
    with pytest.raises(ModelSpecError, match=match) as info:
        check_spec_syntax(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text", [*MODELS, "resnet18", ""])
def test_builtin_and_plain_names_are_not_specs(text):
    assert not is_model_spec(text)
    with pytest.raises(ModelSpecError, match="not a model spec"):
        check_spec_syntax(text)


def test_syntax_check_imports_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # importing it would now fail
    check_spec_syntax("torchvision:resnet18")
    check_spec_syntax("no_such_module_anywhere:make")


# -------------------------------------------------------------------------- torchvision

def test_torchvision_resnet18_fits_the_class_count():
    model = build_from_spec("torchvision:resnet18", num_classes=3)
    assert _logits(model).shape == (2, 3)
    check_model_output(model, in_channels=3, image_size=24, num_classes=3, what="--model x")


def test_normalized_wrapper_applies_mean_and_std():
    mean, std = (0.2, 0.4, 0.6), (0.1, 0.2, 0.3)
    model = build_from_spec("torchvision:resnet18", num_classes=3, mean=mean, std=std)
    assert isinstance(model, Normalized) and isinstance(model.normalize, Normalize)
    x = torch.rand(2, 3, 24, 24)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(_logits(model, x), _logits(model.net, manual))
    assert "normalize.mean" in model.state_dict()  # saved with the weights


def test_normalized_repeats_a_single_statistic_over_the_channels():
    model = build_from_spec("torchvision:resnet18", num_classes=3, mean=(0.5,), std=(0.25,))
    assert model.normalize.mean.shape == (1, 3, 1, 1)


def test_unknown_torchvision_name_suggests_close_matches():
    with pytest.raises(ModelSpecError, match="torchvision:resnet181.*resnet18"):
        build_from_spec("torchvision:resnet181", num_classes=3)


def test_torchvision_needs_three_channels():
    with pytest.raises(ModelSpecError, match="3-channel.*has 1.*factory"):
        build_from_spec("torchvision:resnet18", num_classes=3, in_channels=1)


def test_missing_torchvision_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ModelSpecError, match="pip install torchvision"):
        build_from_spec("torchvision:resnet18", num_classes=3)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache under $TORCH_HOME=tmp_path; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # undo any set_dir()
    return tmp_path / "hub" / "checkpoints"


def _resnet18_weights_file():
    import torchvision
    return os.path.basename(torchvision.models.get_model_weights("resnet18").DEFAULT.url)


def test_pretrained_without_the_file_names_where_to_put_it(hub_dir):
    expected = str(hub_dir / _resnet18_weights_file())
    with pytest.raises(ModelSpecError) as info:
        build_from_spec("torchvision:resnet18", num_classes=3, pretrained=True)
    message = str(info.value)
    assert expected in message and "TORCH_HOME" in message and "download.pytorch.org" in message


def test_pretrained_loads_the_backbone_and_replaces_the_head(hub_dir):
    import torchvision
    torch.manual_seed(0)
    saved = torchvision.models.resnet18(num_classes=1000).state_dict()
    hub_dir.mkdir(parents=True)
    torch.save(saved, hub_dir / _resnet18_weights_file())

    model = build_from_spec("torchvision:resnet18", num_classes=3, pretrained=True)
    state = model.state_dict()
    for key, value in saved.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert model.fc.weight.shape == (3, 512) and model.fc.bias.shape == (3,)
    assert _logits(model).shape == (2, 3)

    same = build_from_spec("torchvision:resnet18", num_classes=1000, pretrained=True)
    torch.testing.assert_close(same.fc.weight, saved["fc.weight"], rtol=0, atol=0)


def test_pretrained_with_a_corrupt_file(hub_dir):
    hub_dir.mkdir(parents=True)
    (hub_dir / _resnet18_weights_file()).write_bytes(b"not a checkpoint")
    with pytest.raises(ModelSpecError, match="could not load pretrained weights.*fetch"):
        build_from_spec("torchvision:resnet18", num_classes=3, pretrained=True)


def test_pretrained_head_must_be_a_linear_layer(hub_dir):
    import torchvision
    weights = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    hub_dir.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1().state_dict(),
               hub_dir / os.path.basename(weights.url))
    with pytest.raises(ModelSpecError, match="no Linear layer with 1000 outputs.*factory"):
        build_from_spec("torchvision:squeezenet1_1", num_classes=3, pretrained=True)


# ---------------------------------------------------------------------------------- timm

def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ModelSpecError, match="pip install timm"):
        build_from_spec("timm:resnet18", num_classes=3)


def test_timm_model_fits_classes_and_channels():
    pytest.importorskip("timm")
    model = build_from_spec("timm:resnet18", num_classes=3, in_channels=1, mean=(0.5,),
                            std=(0.5,))
    assert _logits(model, torch.zeros(2, 1, 24, 24)).shape == (2, 3)


def test_unknown_timm_name_suggests_close_matches():
    pytest.importorskip("timm")
    with pytest.raises(ModelSpecError, match="timm:resnet181.*resnet18"):
        build_from_spec("timm:resnet181", num_classes=3)


def test_timm_pretrained_offline_points_at_the_hugging_face_cache(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    constants = pytest.importorskip("huggingface_hub.constants")
    # Offline with an empty cache: fails at once rather than retrying the network.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelSpecError, match="timm:resnet18.*Hugging Face cache"):
        build_from_spec("timm:resnet18", num_classes=3, pretrained=True)


# ------------------------------------------------------------------------------- factory

_counter = itertools.count()


@pytest.fixture
def module_file(tmp_path, monkeypatch):
    """Write a module into an importable tmp dir; returns its (fresh, unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source):
        name = f"spec_factory_{os.getpid()}_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name
    return write


GOOD = """
    from torch import nn

    def make(num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    def no_kwarg():
        return nn.Linear(2, 2)

    def not_a_module(num_classes):
        return "a string"

    def fails(num_classes):
        raise RuntimeError("boom")

    CONSTANT = 3
"""


def test_factory_builds_the_model(module_file):
    mod = module_file(GOOD)
    model = build_from_spec(f"{mod}:make", num_classes=3)
    assert _logits(model).shape == (2, 3)
    wrapped = build_from_spec(f"{mod}:make", num_classes=3, mean=(0.5,), std=(0.5,))
    assert isinstance(wrapped, Normalized)


def test_factory_module_is_found_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    name = f"cwd_models_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(GOOD))
    try:
        assert isinstance(build_from_spec(f"{name}:make", num_classes=3), nn.Module)
        assert sys.path[0] == str(tmp_path)
    finally:
        sys.modules.pop(name, None)


def test_factory_missing_module():
    with pytest.raises(ModelSpecError, match="cannot import module 'no_such_pkg.models'"):
        build_from_spec("no_such_pkg.models:make", num_classes=3)


def test_misspelt_library_is_read_as_a_module_and_hinted():
    with pytest.raises(ModelSpecError, match="cannot import module 'torchvison'.*did you mean "
                                             "torchvision:resnet18"):
        build_from_spec("torchvison:resnet18", num_classes=3)


def test_factory_module_with_a_missing_dependency(module_file):
    mod = module_file("import no_such_dependency_xyz\n")
    with pytest.raises(ModelSpecError, match="imports 'no_such_dependency_xyz'.*not installed"):
        build_from_spec(f"{mod}:make", num_classes=3)


def test_factory_missing_attribute_lists_the_public_callables(module_file):
    mod = module_file(GOOD)
    with pytest.raises(ModelSpecError) as info:
        build_from_spec(f"{mod}:mak", num_classes=3)
    message = str(info.value)
    assert "has no 'mak'" in message and "fails, make, no_kwarg, not_a_module" in message
    assert f"did you mean {mod}:make" in message and "nn" not in message.split("(")[1]


def test_factory_that_is_not_callable(module_file):
    mod = module_file(GOOD)
    with pytest.raises(ModelSpecError, match="CONSTANT is not callable .it is of type int"):
        build_from_spec(f"{mod}:CONSTANT", num_classes=3)


def test_factory_without_num_classes(module_file):
    mod = module_file(GOOD)
    with pytest.raises(ModelSpecError, match="must accept num_classes="):
        build_from_spec(f"{mod}:no_kwarg", num_classes=3)


def test_factory_returning_a_non_module(module_file):
    mod = module_file(GOOD)
    with pytest.raises(ModelSpecError, match="returned a builtins.str, not an nn.Module"):
        build_from_spec(f"{mod}:not_a_module", num_classes=3)


def test_factory_that_raises(module_file):
    mod = module_file(GOOD)
    with pytest.raises(ModelSpecError, match="factory raised RuntimeError: boom"):
        build_from_spec(f"{mod}:fails", num_classes=3)


def test_factory_with_pretrained_is_refused(module_file):
    mod = module_file(GOOD)
    with pytest.raises(ModelSpecError, match="factory loads its own weights"):
        build_from_spec(f"{mod}:make", num_classes=3, pretrained=True)


# -------------------------------------------------------------------------- output check

def _check(model, num_classes=3):
    check_model_output(model, in_channels=3, image_size=8, num_classes=num_classes,
                       what="--model test:spec")


class _Raises(nn.Module):
    def forward(self, x):
        raise RuntimeError("shapes do not match")


class _Tuple(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3], x


def test_output_with_the_wrong_class_count():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1000))
    with pytest.raises(ModelSpecError, match=r"--model test:spec: the model returns \[2, 1000\] "
                                             r"but the data has 3 classes: build it with "
                                             r"num_classes=3"):
        _check(model)


def test_output_from_a_model_that_raises():
    with pytest.raises(ModelSpecError, match=r"fails on a \[2, 3, 8, 8\] input: "
                                             r"RuntimeError: shapes do not match"):
        _check(_Raises())


def test_output_that_is_a_tuple():
    with pytest.raises(ModelSpecError, match=r"returns a tuple, not a tensor of logits \[2, 3\]"):
        _check(_Tuple())


def test_output_of_the_wrong_rank():
    with pytest.raises(ModelSpecError, match=r"shape \[2, 3, 8, 8\]; expected logits \[2, 3\]"):
        _check(nn.Identity())


def test_output_check_leaves_parameters_statistics_and_modes_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3), nn.Dropout())
    model.train()
    model[1].eval()  # a frozen BN inside a training model stays frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _check(model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True]
