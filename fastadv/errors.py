"""The error every layer raises for a setting that cannot work, so that each command line
reports it the same way: one line, exit status 2."""


class TrainConfigError(ValueError):
    """A training setting (a flag, --out, the data's size) that cannot work, found before or
    while setting the run up: the CLI reports it in one line and exits with status 2."""
