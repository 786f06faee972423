"""How the tabs are wired to each other: every event that puts a trace on show is followed by every tab's "a trace
arrived" hook, whichever tab made the event and in whatever order the tabs were built."""

import pytest
from tiny import tiny_llama

from tempo_core.serving.limits import Limits


@pytest.mark.parametrize("classroom", [False, True], ids=["explore first", "learn first"])
def test_every_event_that_shows_a_trace_is_followed_by_every_hook(built_page, classroom):
    site = built_page(tiny_llama(seed=0), Limits.from_env({"TEMPO_DEMO": "1"}) if classroom else Limits())
    fns = site.blocks.fns
    name = lambda f: getattr(f.fn, "__name__", "")  # noqa: E731
    producers = {i: name(f) for i, f in fns.items() if site.page.trace._id in {o._id for o in f.outputs}}
    producers = {i: n for i, n in producers.items() if n != "file_arrival"}  # Compare's hook reads, never shows
    # Generate, Continue from here, Rerun at a threshold, three recorded examples, an upload, a finished stepped run
    assert sorted(producers.values()) == sorted(["run_stream", "continue_here", "rerun_here", "<lambda>", "<lambda>",
                                                 "<lambda>", "load_trace", "arrived"])
    for i, producer in producers.items():
        first = [j for j, f in fns.items() if f.trigger_after == i]
        assert [name(fns[j]) for j in first] == ["after_run"], producer
        then = sorted(name(f) for f in fns.values() if f.trigger_after == first[0])
        assert then == ["file_arrival", "forget_pick", "refresh"], producer


@pytest.mark.parametrize("classroom", [False, True], ids=["explore first", "learn first"])
def test_tab_bars_hold_only_tabs(built_page, classroom):
    """Anything else among a Tabs' children (a State) is drawn by the browser as a phantom tab that shifts the
    real ones (the page showed "Research" twice and lost "Replay & export")."""
    site = built_page(tiny_llama(seed=0), Limits.from_env({"TEMPO_DEMO": "1"}) if classroom else Limits())
    config = site.blocks.config
    kind = {c["id"]: c["type"] for c in config["components"]}
    labels = {c["id"]: c["props"].get("label") for c in config["components"]}
    bars = []

    def walk(node):
        if kind.get(node["id"]) == "tabs":
            bars.append([labels[c["id"]] for c in node.get("children", [])])
            assert {kind[c["id"]] for c in node.get("children", [])} == {"tabitem"}, bars[-1]
        for child in node.get("children", []):
            walk(child)
    walk(config["layout"])
    top = ["Learn", "Explore"] if classroom else ["Explore", "Learn"]
    assert bars[0] == top
    assert ["Tree", "Pruning heatmap", "Threshold curve", "Compare", "Research", "Replay & export"] in bars
    assert ["Faithfulness", "Positions & mask", "Pruning rewind", "Baselines", "Study", "Threshold sweep"] in bars


@pytest.mark.parametrize("classroom", [False, True], ids=["explore first", "learn first"])
def test_the_views_and_form_the_page_makes_are_each_placed_once(built_page, classroom):
    """The page makes its shared views, form and candidate list before any tab (render=False) and Explore places
    them: each must sit in the layout exactly once, or the browser (and gradio_client) cannot find it."""
    site = built_page(tiny_llama(seed=0), Limits.from_env({"TEMPO_DEMO": "1"}) if classroom else Limits())
    placed = []

    def walk(node):
        placed.append(node["id"])
        for child in node.get("children", []):
            walk(child)
    walk(site.blocks.config["layout"])
    page = site.page
    shared = [*page.view.outputs, *page.form.values(), page.node_pick]
    assert all(placed.count(c._id) == 1 for c in shared), [c for c in shared if placed.count(c._id) != 1]
    dependencies = {i for f in site.blocks.config["dependencies"] for i in (*f["inputs"], *f["outputs"])}
    known = {c["id"] for c in site.blocks.config["components"]}
    assert dependencies <= known  # no listener names a component the page does not have
