"""Imports run one way, absolute and relative ones alike, even those inside a function.

Between packages: the engine (tempo_core) -> pure trace-to-figure functions (components/figures) -> serving
plumbing (components/server) -> the tabs (components/tabs) -> app.py and cli.py, which only assemble.

Inside the engine, three wings around the algorithm (README "Map"):
  runtime/    below it: how rows are computed and where caches live; imports nothing else of tempo_core
  (the algorithm) tempo_core/*.py: selection, layout, the step loop, pruning, the modes; imports the runtime only
  analysis/   above it: what is measured of finished runs; never the serving wing
  serving/    above it: many runs on one model (scheduler, model runner, warm-ups, request limits)
tempo_core's front door (`__init__`, `__main__`, `cli`) may import any wing. Imports made only for type checking
(`if TYPE_CHECKING:`) are not followed: they do not run.
"""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["tempo_core", "components.figures", "components.server", "components.tabs", "app"]
NO_GRADIO = {"tempo_core", "components.figures"}  # plain data in, figures out: usable without a web page

ALGORITHM = {"baseline", "config", "engine", "events", "forward", "layout", "mcts", "model", "modes", "pruning",
             "schedule", "selection", "sequence", "settings_sources", "soft", "steer", "stop", "text", "trace",
             "trace_check"}
FRONT_DOOR = {"__init__", "__main__", "cli"}
# wing -> the wings it may import
MAY_IMPORT = {"runtime": {"runtime"},
              "algorithm": {"runtime", "algorithm"},
              "analysis": {"runtime", "algorithm", "analysis"},
              "serving": {"runtime", "algorithm", "analysis", "serving"},
              "front door": {"runtime", "algorithm", "analysis", "serving", "front door"}}
MAX_LINES = 300
LONGER = {}  # path -> why it is longer than MAX_LINES


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> set[str]:
    """Every module `path` imports (relative imports resolved), wherever in the file, except under TYPE_CHECKING."""
    package = module_name(path).split(".")[:-1]
    tree = ast.parse(path.read_text())
    found = set()
    skipped = {id(n) for top in ast.walk(tree) if _type_checking_only(top) for n in ast.walk(top)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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


def wing(module: str) -> str | None:
    """The wing of a tempo_core module (None: in no wing, or not tempo_core's)."""
    parts = module.split(".")
    if parts[0] != "tempo_core":
        return None
    if len(parts) == 1 or parts[1] in FRONT_DOOR:
        return "front door"
    if parts[1] in ("runtime", "analysis", "serving"):
        return parts[1]
    return "algorithm" if parts[1] in ALGORITHM else None


SOURCES = sorted([*ROOT.glob("tempo_core/**/*.py"), *ROOT.glob("components/*/*.py"), ROOT / "app.py", ROOT / "cli.py"])
ENGINE = [p for p in SOURCES if p.parts[-2] != "components" and "tempo_core" in p.relative_to(ROOT).parts[:1]]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_its_own_layer_or_those_below(path):
    own = layer(module_name(path))
    assert own is not None, f"{path} is in no layer: add it to LAYERS"
    upward = {m for m in imports(path) if (layer(m) or 0) > own}
    assert not upward, f"{module_name(path)} reaches up to {sorted(upward)}"
    if LAYERS[own] in NO_GRADIO:
        assert not {m for m in imports(path) if m.split(".")[0] in ("gradio", "fastapi", "spaces")}


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_engine_module_is_in_a_wing_and_imports_only_the_wings_it_stands_on(path):
    own = wing(module_name(path))
    assert own is not None, (f"{module_name(path)} is in no wing: put it in runtime/, analysis/ or serving/, or add it "
                             f"to ALGORITHM if it is the algorithm's")
    reached = {m: wing(m) for m in imports(path) if m.split(".")[0] == "tempo_core"}
    wrong = sorted(m for m, w in reached.items() if w not in MAY_IMPORT[own])
    assert not wrong, f"{module_name(path)} ({own}) imports {wrong}"


def test_the_step_loop_imports_neither_serving_nor_analysis():
    reached = {wing(m) for m in imports(ROOT / "tempo_core" / "engine.py") if m.startswith("tempo_core")}
    assert reached <= {"algorithm", "runtime"}


@pytest.mark.parametrize("path", [p for p in SOURCES if p.parts[-1] != "cli.py" or p.parent != ROOT],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_longer_than_a_reader_holds_at_once(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES or str(path.relative_to(ROOT)) in LONGER, f"{path.relative_to(ROOT)}: {lines} lines"


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


def test_the_wing_rule_refuses_the_old_single_folder_engine(tmp_path, monkeypatch):
    """The layout before the wings: the step loop importing the batcher (tempo_core/batch.py, in no wing) and the
    modes importing an analysis. Both are refused; the TYPE_CHECKING import of a runtime module is not."""
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (tmp_path / "tempo_core" / "runtime").mkdir(parents=True)
    engine = tmp_path / "tempo_core" / "engine.py"
    engine.write_text("from .batch import Batcher\nfrom .runtime.graphs import bucket\n")
    assert wing("tempo_core.batch") is None and wing(module_name(engine)) == "algorithm"
    modes = tmp_path / "tempo_core" / "modes.py"
    modes.write_text("from .analysis.faithfulness import measure_iter\n")
    assert wing(next(iter(imports(modes)))) == "analysis" not in MAY_IMPORT["algorithm"]
    holder = tmp_path / "tempo_core" / "runtime" / "__init__.py"
    holder.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..serving.graphed import G\n")
    assert imports(holder) == {"typing"}
