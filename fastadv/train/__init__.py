"""``python -m fastadv.train``: adversarial training end to end (see ``--help``), and the same
as a Python call::

    from fastadv.train import TrainConfig, train
    summary = train(TrainConfig.for_dataset("cifar10", epochs=30, precision="bf16"))

and for one's own model and data, ``fastadv.fit(model, (x, y), eps=8/255, epochs=30)``
(:mod:`fastadv.train.fit`): the same loop.
"""

from .config import DATASET_DEFAULTS, METHODS, TrainConfig, TrainConfigError
from .divergence import TrainingDiverged
from .elastic import PeerLost, RunStopped
from .loop import train

__all__ = ["DATASET_DEFAULTS", "METHODS", "PeerLost", "RunStopped", "TrainConfig",
           "TrainConfigError", "TrainingDiverged", "main", "train"]


def main(argv=None):
    from .cli import main as _main

    return _main(argv)
