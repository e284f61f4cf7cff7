"""What a person reads while medsynth works: progress bars on a terminal, one line per epoch
anywhere else (piped, CI, nohup), and the libraries' chatter (Lightning's device and "Tip"
notices, third-party deprecation warnings) kept out of the way unless asked for.

The command line sets the level once (`--quiet`, `--verbose`); the Python API leaves global
logging and warning filters alone and only chooses progress bars or epoch lines.
"""

from __future__ import annotations

import logging
import sys
import warnings

QUIET, NORMAL, VERBOSE = 0, 1, 2
_level = NORMAL

# warnings that say nothing a medsynth user can act on
_NOISE = (".*is deprecated.*", "The number of training batches .* is smaller than the logging interval",
          ".*does not have many workers.*", ".*`isinstance\\(treespec, LeafSpec\\)`.*")


def set_verbosity(level: int) -> None:
    """QUIET: results and errors only; NORMAL: plus progress; VERBOSE: plus every library notice."""
    global _level
    _level = level
    lightning_level = logging.INFO if level >= VERBOSE else logging.WARNING
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(lightning_level)
    if level < VERBOSE:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)


def verbosity() -> int:
    return _level


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bars() -> bool:
    """Live progress bars: only on a terminal, where a carriage return redraws them."""
    return _level >= NORMAL and on_terminal()


def epoch_lines() -> bool:
    """One line per epoch instead of bars: off a terminal, where bars would be spam."""
    return _level >= NORMAL and not on_terminal()


def say(message: str) -> None:
    """A progress line on stderr (stdout carries results, e.g. the run directory)."""
    if _level >= NORMAL:
        print(message, file=sys.stderr, flush=True)
