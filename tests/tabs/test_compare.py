"""Compare: the session's history keeps the last runs and shows any two side by side; a trace that arrives on
the page is filed once, as A."""

from __future__ import annotations

import gradio as gr
from tiny import tiny_llama

from components.tabs.compare import HISTORY, add_run, choices, numbers_table
from tempo_core import Trace, build_settings, run


def test_history_keeps_the_last_runs_and_compares_any_two(built_page):
    lm = tiny_llama(seed=3)
    compare = built_page(lm).explore.compare
    a = run(lm, build_settings({"prompt": "the cat", "max_tokens": 6, "selection_threshold": 0.05})).to_dict()
    b = run(lm, build_settings({"prompt": "hello world", "max_tokens": 6, "selection_threshold": 0.2})).to_dict()
    history = []
    for i in range(HISTORY + 2):
        history = add_run(history, a if i % 2 == 0 else b)
    assert len(history) == HISTORY and [h["id"] for h in history] == list(range(3, HISTORY + 3))
    assert choices(history)[0][1] == HISTORY + 2  # newest first
    out = compare.compare(history, history[-1]["id"], history[-2]["id"])
    tree_a, tree_b, text_a, text_b, numbers, overlay = (out[c] for c in (
        compare.tree_a, compare.tree_b, compare.text_a, compare.text_b, compare.numbers, compare.overlay))
    assert tree_a != tree_b and text_a["clean"] != text_b["clean"]
    assert "setting `prompt`" in numbers and "setting `selection_threshold`" in numbers
    assert "hello world" in numbers and "the cat" in numbers
    assert any(tr.name == "only in B" for tr in overlay.data)
    same = numbers_table(Trace.from_dict(a), Trace.from_dict(a))
    assert "| settings | same | same |" in same


def test_a_trace_that_arrives_is_filed_once_with_its_source_and_shown_as_a(built_page):
    lm = tiny_llama(seed=3)
    site = built_page(lm)
    compare, arrived = site.explore.compare, site.page.arrived
    a = run(lm, build_settings({"prompt": "the cat", "max_tokens": 4})).to_plain()
    b = run(lm, build_settings({"prompt": "hello world", "max_tokens": 4})).to_plain()
    out = compare.file_arrival([], a, "uploaded")
    assert out[arrived] is None and [h["trace"] for h in out[compare.history]] == [a]
    assert out[compare.history][0]["label"].startswith("#1 uploaded · tempo")
    out = compare.file_arrival(out[compare.history], b, "continued")
    history = out[compare.history]
    assert [h["trace"] for h in history] == [a, b]
    assert out[compare.pick_a]["value"] == 2 and out[compare.pick_b]["value"] == 1  # A the newest
    assert out[compare.text_a] == compare.compare(history, 2, 1)[compare.text_a]
    # the same trace on show again with no new arrival (a run that failed, a replay) is not filed twice
    assert compare.file_arrival(history, b, None) == gr.skip()
