"""The epoch meter's sums are saved by name, and checkpoints that saved them by position
still resume."""

import torch

from fastadv.train.meter import EpochMeter, Progress


def _meter():
    meter = EpochMeter()
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 0, 0])
    meter.add(torch.tensor(0.5), {"kl": torch.tensor(0.25)}, logits, y)
    meter.images, meter.seconds = 3.0, 1.5
    return meter


def test_the_state_round_trips_by_name():
    state = _meter().state_dict()
    assert state == {"loss_sum": 1.5, "part_sums": {"kl": 0.75}, "correct": 2.0, "seen": 3.0,
                     "images": 3.0, "seconds": 1.5}
    other = EpochMeter()
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_positional_sums_of_older_checkpoints_load():
    meter = EpochMeter()
    meter.load_state_dict(EpochMeter.positional_state([1.5, 2.0, 3.0, 3.0, 1.5], {"kl": 0.75}))
    assert meter.state_dict() == _meter().state_dict()


def test_reset_clears_the_epoch_and_progress_saves_every_field():
    meter = _meter()
    meter.reset()
    assert meter.state_dict() == {"loss_sum": 0.0, "part_sums": {}, "correct": 0.0,
                                  "seen": 0.0, "images": 0.0, "seconds": 0.0}
    progress = Progress(epoch=2, step_in_epoch=5, global_step=25)
    assert Progress(**progress.state_dict()) == progress
