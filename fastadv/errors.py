"""The error every layer raises for a setting that cannot work, so that each command line
reports it the same way: one line, exit status 2."""


class TrainConfigError(ValueError):
    """A training setting (a flag, --out, the data's size) that cannot work, found before or
    while setting the run up: the CLI reports it in one line and exits with status 2."""


class FormWarning(UserWarning):
    """A fused op was handed a tensor that does not look like its form: ``pgd_`` an x_adv
    outside its box around x_nat (a perturbation, or normalised inputs with the default
    [0, 1] bounds), ``pgd_delta_`` a delta outside its ε-ball (an image). The op still runs:
    it projects into the box, which is not a PGD step from where the tensor was."""
