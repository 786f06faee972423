"""The engine's modules import only downward: no cycle, not even through an import inside a function."""

from pathlib import Path

import networkx as nx
import pytest
from test_layers import imports, module_name

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)

PACKAGE = Path(__file__).resolve().parents[2] / "tempo_core"


def test_tempo_core_imports_form_no_cycle():
    """Module to module, in every wing (a package's `__init__` counts as the package; the front door is left out:
    it imports what it offers)."""
    graph = nx.DiGraph()
    modules = {module_name(p).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}
    for name, path in modules.items():
        graph.add_node(name)
        for target in imports(path):
            if target in modules:
                graph.add_edge(name, target)
    graph.remove_nodes_from(["tempo_core", "tempo_core.__main__", "tempo_core.cli"])
    assert nx.is_directed_acyclic_graph(graph), nx.find_cycle(graph)
    assert "tempo_core.modes" not in nx.descendants(graph, "tempo_core.engine")  # the dispatch sits above the modes
    assert {"tempo_core.engine", "tempo_core.baseline", "tempo_core.mcts"} <= nx.descendants(graph, "tempo_core.modes")


def test_the_cpu_fast_path_is_scoped_to_tempos_forwards_and_undone():
    """fast_rows patches the model's nn.Linear layers only while TEMPO's own forward runs; a model passed in
    comes out as it went in, and its plain forwards give the same numbers."""
    import torch
    from tiny import tiny_llama

    from tempo_core import build_settings, run
    from tempo_core.runtime.fastpath import fast_rows
    lm = tiny_llama(seed=0)
    linears = [m for m in lm.model.modules() if type(m) is torch.nn.Linear]
    assert linears and not any("forward" in vars(m) for m in linears)  # wrapping a model leaves them alone
    run(lm, build_settings(dict(prompt="once upon a time", max_tokens=4, selection_threshold=0.05)))
    assert not any("forward" in vars(m) for m in linears)  # undone after the run
    x = torch.randn(1, 3, linears[0].in_features)
    with fast_rows(lm.model):
        assert all("forward" in vars(m) for m in linears)
        with fast_rows(lm.model):  # nested blocks: undone only when the outer one closes
            fast = linears[0](x)
        assert all("forward" in vars(m) for m in linears)
    assert not any("forward" in vars(m) for m in linears)
    assert torch.allclose(fast, linears[0](x), atol=1e-5)
