"""The one exception type a user sees.

Anything raised as `MedsynthError` is printed by the CLI as a single line
naming the file, key or value at fault; anything else is a bug and keeps its
traceback.
"""


class MedsynthError(Exception):
    """Bad input or a run that cannot go on; the message says what and where."""


class TrainingDiverged(MedsynthError):
    """Training cannot usefully go on (the run keeps its last good checkpoint)."""


class NonFiniteLossError(TrainingDiverged):
    """The training loss became NaN or inf."""


class DiscriminatorCollapse(TrainingDiverged):
    """A discriminator's loss has stayed at zero: it wins outright and the generator learns nothing."""


def reason(exc: BaseException, limit: int = 200) -> str:
    """A library exception as one printable line for a MedsynthError message.

    Readers quote the library's own words, but those can hold newlines and raw
    bytes from the damaged file itself (a corrupt NRRD magic line is echoed back
    verbatim); a user's error must stay one readable line.
    """
    text = " ".join(str(exc).split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
