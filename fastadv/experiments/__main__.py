"""``python -m fastadv.experiments {landscape,capacity,plot-run}``: bad input exits with
status 2 and one line naming the argument."""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    from . import capacity, landscape, plot_run

    p = argparse.ArgumentParser(
        prog="python -m fastadv.experiments",
        description="The analyses of Madry et al. on your own models; each writes JSON next "
                    "to a PNG.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    landscape.add_parser(sub)
    capacity.add_parser(sub)
    plot_run.add_parser(sub)
    return p


def main(argv=None) -> int:
    from .output import ExperimentError

    p = parser()
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except ExperimentError as exc:
        print(f"python -m fastadv.experiments {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
