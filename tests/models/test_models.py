"""The model zoo: every architecture builds for every dataset shape, normalises inside, and
has the size its paper gives."""

import pytest
import torch

from fastadv.models import MODELS, MadryCNN, WideResNet, build_model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels, size", [(1, 8), (1, 28), (3, 32)])
def test_every_model_builds_for_every_shape(name, channels, size):
    if name == "wrn-34-10" and size != 32:
        pytest.skip("46M parameters: one shape is enough")
    if name == "madry-cnn" and size % 4:
        with pytest.raises(ValueError, match="divisible by 4"):
            build_model(name, in_channels=channels, image_size=size)
        return
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size,
                        mean=(0.5,), std=(0.25,)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert model.normalize.mean.shape == (1, channels, 1, 1)


def test_parameter_counts_match_the_papers():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 46.1e6 < count(WideResNet(34, 10)) < 46.2e6  # WRN-34-10: 46.16M
    assert 11.1e6 < count(build_model("preact-resnet18")) < 11.2e6
    # Madry et al.'s MNIST CNN: 3.27M parameters (the 1024-unit layer on 7x7x64 dominates).
    assert 3.2e6 < count(MadryCNN()) < 3.3e6
    # Capacity scaling: the paper's smallest network, 2 and 4 filters, 64 hidden units.
    small = MadryCNN(width=1)
    assert small.features[0].out_channels == 2 and small.head[0].out_features == 64


def test_normalisation_is_inside_the_model():
    model = build_model("small-cnn", in_channels=3, mean=(0.2, 0.4, 0.6), std=(0.1, 0.2, 0.3))
    x = torch.rand(1, 3, 8, 8)
    expected = (x - torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)) / torch.tensor(
        [0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(x), expected)
    assert "normalize.mean" in model.state_dict()  # saved with the weights


def test_unknown_model():
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("vgg16")
