"""The house has floors: nothing imports upward or in a circle, counting imports inside functions.

Walks src/medsynth with ast (no module is imported), so a function-level import that would only
fail at run time is caught here too. Floors, bottom first, as in docs/architecture.md; a module
may import from its own floor or any below, and the graph must have no cycle."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "medsynth"
FLOORS = [
    ["errors", "families", "precision", "writers", "console", "diffusion", "pages"],
    ["config", "runs", "dicom", "tracking", "reference_cache"],
    ["provenance", "msssim", "data", "nets"],
    ["losses", "features", "metrics", "latent_prior"],
    ["models"],
    ["feature_runs", "artefacts"],
    ["training", "sampling", "translate", "segment", "pairs", "class_runs", "prior_runs"],
    ["evaluate", "case_evaluation", "segmentation_utility", "report", "compare"],
    ["cli", ""],  # "" is the package itself (medsynth/__init__.py re-exports the API)
]


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The medsynth modules `name` imports anywhere in its file (module or function level)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known}


def floor(module: str) -> int:
    rest = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    top = rest.split(".")[0]
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(f"{module} is on no floor: add it to FLOORS (and docs/architecture.md)")


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, m, set(mods)) - {m} for m, p in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_every_module_is_on_a_floor_and_imports_only_down_or_level():
    edges = graph()
    assert len(edges) > 40
    upward = [f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})"
              for a, targets in sorted(edges.items()) for b in sorted(targets) if floor(b) > floor(a)]
    assert upward == []


def test_no_import_cycle():
    assert find_cycle(graph()) is None


def test_the_checks_can_fail():
    """The walker sees function-level imports, and the cycle search finds a planted circle."""
    edges = graph()
    assert "medsynth.models" in edges["medsynth.feature_runs"]
    planted = {k: set(v) for k, v in edges.items()}
    planted["medsynth.writers"].add("medsynth.cli")
    assert find_cycle(planted) is not None
    assert floor("medsynth.cli") > floor("medsynth.writers")
