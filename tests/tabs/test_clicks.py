"""Explore's clicks: a stretch opens, a node shows its details, a pruned cross opens its rewind."""

from __future__ import annotations

import types

import gradio as gr

from components.figures.inspect import node_details
from components.figures.tree import units
from tempo_core import build_settings, run
from tiny import tiny_llama

LONG = {"prompt": "the cat", "max_tokens": 200, "selection_threshold": 0.05, "use_retroactive_pruning": True,
        "attention_threshold": 0.05}


def click(node: str, source: str | None = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(_data={"node": node, "source": source})


def test_clicks_expand_stretches_select_nodes_and_open_a_pruned_candidates_rewind(built_page):
    lm = tiny_llama(seed=3)
    site = built_page(lm)
    inspector, research, tree = site.explore.inspector, site.explore.research, site.page.view.tree
    figure_tabs = site.explore.figure_tabs
    narrow = run(lm, build_settings({"prompt": "the cat", "max_tokens": 60, "selection_threshold": 0.3}))
    stretch = next(u for u in units(narrow) if u.collapsed)
    out = inspector.expand_stretch(narrow.to_dict(), [], click(stretch.id))
    nodes = next(t for t in out[tree]["data"] if t["name"] == "candidate")
    assert f"{stretch.first}:0" in nodes["customdata"] and out[site.page.expanded] == [stretch.first]
    for bogus in ("run:999999-1000000", "run:x", f"run:{stretch.first}-{stretch.last + 5}"):  # not on the page
        assert inspector.expand_stretch(narrow.to_dict(), [], click(bogus)) == gr.skip()  # the list does not grow
    trace = run(lm, build_settings(LONG))
    data = trace.to_dict()
    pruned = next(f"{st.step}:{i}" for st in trace.steps for i, c in enumerate(st.candidates) if c.pruned_at)
    out = inspector.clicked(data, [], click(pruned, "tempo-heatmap"))
    assert out[site.page.node_pick] == pruned and out[research.rewind_pick] == pruned
    assert "pruned** after step" in out[inspector.details]
    assert out[figure_tabs].selected == "research" and out[research.tabs].selected == "rewind"
    # from the tree, a pruned node opens its details but stays on the tree
    out = inspector.clicked_in_tree(data, [], click(pruned))
    assert out[research.rewind_pick] == pruned and figure_tabs not in out
    assert inspector.clicked(data, [], click("-1:0")) == gr.skip()
    # a node clicked in the tree is ringed by the page itself: only its details come back (the tree is not an
    # output); from the text, the tree is redrawn with the node ringed
    from_tree = inspector.clicked_in_tree(data, [], click("3:0"))
    assert from_tree == {inspector.details: node_details(trace, "3:0"), site.page.node_pick: "3:0"}
    from_text = inspector.clicked(data, [], click("3:0", "tempo-text"))
    ringed = next(t for t in from_text[tree]["data"] if t["name"] == "selected")
    assert (ringed["x"], ringed["y"]) == ([3], [0])


def test_a_pruned_candidate_picked_for_its_rewind_is_checked_like_every_click(built_page):
    """The rewind's node id comes from the browser: a real pruned candidate gets its three figures; an id that is
    not a candidate of the trace (a negative index included) changes nothing."""
    lm = tiny_llama(seed=3)
    research = built_page(lm).explore.research
    trace = run(lm, build_settings(LONG))
    data = trace.to_dict()
    step, i = next((st.step, i) for st in trace.steps for i, c in enumerate(st.candidates) if c.pruned_at)
    out = research.show_rewind(data, f"{step}:{i}")
    assert set(out) == {research.rewind_plot, research.before_plot, research.after_plot}
    assert f"at step {step}" in out[research.rewind_plot].layout.title.text
    for bogus in ("-1:0", "0:-1", "x", f"{len(trace.steps)}:0"):
        assert research.show_rewind(data, bogus) == gr.skip(), bogus


def test_a_clicked_node_outlines_its_step_in_the_commitment_strip(built_page):
    """With a commitment record the strip is redrawn with the clicked node's step outlined, from the tree, the text
    and the list alike; its numbers are the trace's."""
    lm = tiny_llama(seed=3)
    site = built_page(lm)
    inspector, strip = site.explore.inspector, site.page.view.strip
    trace = run(lm, build_settings({"prompt": "the cat", "max_tokens": 6, "selection_threshold": 0.05,
                                    "commitment": True}))
    data = trace.to_dict()
    for out in (inspector.clicked_in_tree(data, [], click("4:0")),
                inspector.clicked(data, [], click("4:0", "tempo-text")),
                inspector.show_node(data, "4:0", [])):
        fig = out[strip]
        assert [(s["x0"], s["x1"]) for s in fig["layout"]["shapes"]] == [(3.5, 4.5)]
        assert fig["data"][0]["z"][0] == [x["p_final"][0] for x in trace.commitment["steps"]]
