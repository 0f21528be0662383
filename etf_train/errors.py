"""The one exception type that reaches users as a single line (see cli.py)."""


class EtfTrainError(ValueError):
    """Bad input or an unrecoverable run condition, worded for the user."""


class NonFiniteError(EtfTrainError):
    """NaN or inf reached the model's features, class means or loss (the run diverged)."""


def as_etf_error(error: Exception, log) -> EtfTrainError:
    """etf-train's own errors as they are; any other (out of memory, a library's error) as one line naming its type and
    first line, and the log file that holds its traceback."""
    if isinstance(error, EtfTrainError):
        return error
    text = str(error).strip()
    return EtfTrainError(f"{type(error).__name__}: {text.splitlines()[0] if text else 'no message'} (the traceback is "
                         f"in {log})")
