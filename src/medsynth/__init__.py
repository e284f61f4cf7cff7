"""medsynth: train, sample and audit deep generative models of medical images.

The Python API mirrors the command line: `train`, `sample`, `load_run`.
"""

__version__ = "0.1.0"


def train(*args, **kwargs):
    from medsynth.training import train as _train

    return _train(*args, **kwargs)


def sample(*args, **kwargs):
    from medsynth.sampling import sample as _sample

    return _sample(*args, **kwargs)


def load_run(*args, **kwargs):
    from medsynth.io import load_run as _load_run

    return _load_run(*args, **kwargs)
