"""medsynth: train, sample and audit deep generative models of medical images.

The Python API mirrors the command line, one function per sub-command:

    train(config, overrides, resume)            -> run directory        (medsynth train)
    sample(run_dir, n, out)                     -> output path          (medsynth sample)
    translate(run_dir, input, out)              -> output path          (medsynth translate)
    segment(run_dir, input, out)                -> per-case records     (medsynth segment)
    evaluate(real, fake, features=...)          -> metrics dict         (medsynth evaluate)
    report(run_dir)                             -> report.html path     (medsynth report)
    load_run(run_dir)                           -> the trained recipe (sample / reconstruct / translate / segment)

These are the real functions, signatures and docstrings intact (`help(medsynth.train)`).
"""

__version__ = "0.1.0"

from medsynth.evaluate import evaluate  # noqa: E402
from medsynth.models import load_run  # noqa: E402
from medsynth.report import report  # noqa: E402
from medsynth.sampling import sample  # noqa: E402
from medsynth.segment import segment  # noqa: E402
from medsynth.training import train  # noqa: E402
from medsynth.translate import translate  # noqa: E402

__all__ = ["__version__", "train", "sample", "translate", "segment", "evaluate", "report", "load_run"]
