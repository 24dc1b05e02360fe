"""The seed paper's analyses as commands (``python -m fastadv.experiments --help``):

- ``landscape``: the histogram of final PGD losses over many random restarts per example
  (Madry et al., Figure 1), a batched-restart workload, with its spread and restarts/s;
- ``capacity``: standard, FGSM and PGD training at growing width, clean and PGD accuracy
  against capacity (Figure 4);
- ``plot-run``: a training run's saddle-point loss and accuracies per epoch (§5).

Each writes its numbers as JSON next to its PNG. The same as Python calls:
``landscape.run``, ``capacity.run``, ``plot_run.run``.
"""


def main(argv=None) -> int:
    from .__main__ import main as _main

    return _main(argv)


__all__ = ["main"]
