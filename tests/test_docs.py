"""README and docs/ say only what runs: every `medsynth` command they show has a --help that
parses, every recipe they name loads, every doc they link exists, and README stays a guide."""

import re
from pathlib import Path

import pytest

from conftest import NEEDS_A_RUN, ROOT
from medsynth.cli import build_parser, main
from medsynth.config import load_config

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]


def shell_lines() -> list[str]:
    """Every line of a ```bash block in the pages, comments stripped."""
    lines = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", page.read_text(), flags=re.S):
            lines += [ln.split("#")[0].strip() for ln in block.splitlines() if ln.split("#")[0].strip()]
    return lines


def commands() -> list[tuple[str, ...]]:
    """The distinct sub-commands shown (e.g. ("features", "train")), from `medsynth ...` lines."""
    names = set(build_parser()._subparsers._group_actions[0].choices)
    found = set()
    for line in shell_lines():
        for m in re.finditer(r"(?:^|[\s;(&|])medsynth(?:\.cli)?\s+([a-z]+)(?:\s+([a-z]+))?", line):
            sub, action = m.group(1), m.group(2)
            if sub in names:
                found.add((sub, action) if sub == "features" and action else (sub,))
    return sorted(found)


def test_the_pages_show_the_main_commands():
    shown = {c[0] for c in commands()}
    assert {"train", "sample", "evaluate", "report", "translate", "segment", "features"} <= shown


@pytest.mark.parametrize("command", commands(), ids=" ".join)
def test_every_command_shown_has_a_help_that_parses(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: medsynth" in capsys.readouterr().out


def test_every_sub_command_runs_a_function():
    """Each sub-command (and `features train`) is wired to the function that runs it."""
    subs = build_parser()._subparsers._group_actions[0].choices
    for name, parser in subs.items():
        if name == "features":
            parser = parser._subparsers._group_actions[0].choices["train"]
        assert callable(parser.get_default("func")), name


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and re.match(r"medsynth \d+\.\d+", capsys.readouterr().out)


def test_every_recipe_named_exists_and_loads():
    named = set()
    for page in PAGES:
        named |= set(re.findall(r"configs/[a-z0-9_]+\.yaml", page.read_text()))
    assert named
    for rel in sorted(named):
        load_config(ROOT / rel, NEEDS_A_RUN.get(Path(rel).stem))  # raises MedsynthError naming the file and key if not


def test_every_local_link_resolves():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which is not there"


def test_readme_is_a_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "make demo" in readme and "make test" in readme
