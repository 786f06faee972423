"""Imports run one way through the repository's layers, absolute and relative ones alike, even those inside a
function: the engine (tempo_core) -> pure trace-to-figure functions (components/figures) -> serving plumbing
(components/server) -> the tabs (components/tabs) -> app.py and cli.py, which only assemble."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["tempo_core", "components.figures", "components.server", "components.tabs", "app"]
NO_GRADIO = {"tempo_core", "components.figures"}  # plain data in, figures out: usable without a web page


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports (relative imports resolved), wherever in the file."""
    package = module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            found.add(".".join([*base, *(node.module or "").split(".")]).strip("."))
    return found


def layer(module: str) -> int | None:
    if module in ("app", "cli"):
        return len(LAYERS) - 1
    ranks = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return ranks[-1] if ranks else None


SOURCES = sorted([*ROOT.glob("tempo_core/*.py"), *ROOT.glob("components/*/*.py"), ROOT / "app.py", ROOT / "cli.py"])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_its_own_layer_or_those_below(path):
    own = layer(module_name(path))
    assert own is not None, f"{path} is in no layer: add it to LAYERS"
    upward = {m for m in imports(path) if (layer(m) or 0) > own}
    assert not upward, f"{module_name(path)} reaches up to {sorted(upward)}"
    if LAYERS[own] in NO_GRADIO:
        assert not {m for m in imports(path) if m.split(".")[0] in ("gradio", "fastapi", "spaces")}


def test_the_rule_sees_absolute_relative_and_late_imports(tmp_path, monkeypatch):
    """The checker itself: an upward import is found however it is written."""
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (tmp_path / "tempo_core").mkdir()
    f = tmp_path / "tempo_core" / "x.py"
    f.write_text("def f():\n    from components.figures import report\n")
    assert layer(next(iter(imports(f)))) == 1
    f.write_text("from .model import load\nimport gradio as gr\n")
    assert imports(f) == {"tempo_core.model", "gradio"}
    g = tmp_path / "components" / "server"
    g.mkdir(parents=True)
    (g / "y.py").write_text("from ..tabs.page import Page\n")
    assert imports(g / "y.py") == {"components.tabs.page"} and layer("components.tabs.page") == 3
