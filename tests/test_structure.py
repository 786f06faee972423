"""The engine's modules import only downward: no cycle, not even through an import inside a function."""

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "tempo_core"


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
