"""The one exception type a user sees.

Anything raised as `MedsynthError` is printed by the CLI as a single line
naming the file, key or value at fault; anything else is a bug and keeps its
traceback.
"""


class MedsynthError(Exception):
    """Bad input or a run that cannot go on; the message says what and where."""


class NonFiniteLossError(MedsynthError):
    """The training loss became NaN or inf."""
