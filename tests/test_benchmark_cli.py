"""benchmarks/_cli.py: the benchmarks' way of running `medsynth`, in this process (the zoo's default)
as well as in a new one, gives the command's last output line or one error naming what failed."""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import _cli  # noqa: E402


@pytest.fixture
def in_process(monkeypatch):
    monkeypatch.setattr(_cli, "IN_PROCESS", True)


def test_in_process_returns_the_last_line_printed(in_process, tmp_path, monkeypatch):
    import os

    from medsynth import __version__

    monkeypatch.chdir(tmp_path)
    argv = list(sys.argv)
    assert _cli.medsynth("--version") == f"medsynth {__version__}"
    assert os.getcwd() == str(tmp_path) and sys.argv == argv  # put back, as after a separate process


def test_in_process_failure_is_system_exit_with_the_commands_error(in_process, tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(SystemExit) as failure:
        _cli.medsynth("evaluate", "--real", str(missing), "--fake", str(missing), "--out", str(tmp_path / "e.json"))
    assert "medsynth evaluate --real failed" in str(failure.value) and "nowhere.npz" in str(failure.value)
    assert not (tmp_path / "e.json").exists()
