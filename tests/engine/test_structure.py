"""The engine's modules import only downward: no cycle, not even through an import inside a function."""

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[2] / "tempo_core"


def test_tempo_core_imports_form_no_cycle():
    graph = nx.DiGraph()
    for path in PACKAGE.glob("*.py"):
        graph.add_node(path.stem)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                graph.add_edge(path.stem, node.module.split(".")[0])
    graph.remove_nodes_from(["__init__", "__main__"])
    assert nx.is_directed_acyclic_graph(graph), nx.find_cycle(graph)
    assert "modes" not in nx.descendants(graph, "engine")  # the dispatch sits above the modes
    assert {"engine", "baseline", "mcts"} <= nx.descendants(graph, "modes")


def test_the_cpu_fast_path_is_scoped_to_tempos_forwards_and_undone():
    """fast_rows patches the model's nn.Linear layers only while TEMPO's own forward runs; a model passed in
    comes out as it went in, and its plain forwards give the same numbers."""
    import torch
    from tiny import tiny_llama

    from tempo_core import build_settings, run
    from tempo_core.fastpath import fast_rows
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
