"""The one exception type that reaches users as a single line (see cli.py)."""


class EtfTrainError(ValueError):
    """Bad input or an unrecoverable run condition, worded for the user."""


class NonFiniteError(EtfTrainError):
    """NaN or inf reached the model's features, class means or loss (the run diverged)."""
