"""The Explore views of a trace (tree, heatmap, text) stay readable at 200 steps and show what the trace says."""

from __future__ import annotations

import pytest

from components.figures.curve import curve_view
from components.figures.heatmap import heatmap_view
from components.figures.inspect import node_details
from components.figures.style import main_path, show_token
from components.figures.text import text_view
from components.figures.tree import COLLAPSE_MIN, LABEL_PROB, WINDOW, tree_view, units
from tempo_core import Trace, build_settings, run
from tiny import tiny_llama

LONG = {"prompt": "the cat", "max_tokens": 200, "selection_threshold": 0.05, "use_retroactive_pruning": True,
        "attention_threshold": 0.05}


def labels_of(fig: dict, name: str) -> dict[str, str]:
    """The labels a tree draws for its `name` nodes: {node id: label}."""
    t = next(t for t in fig["data"] if t["name"] == f"{name} labels")
    return dict(zip(t["customdata"], t["text"]))


def _lm():
    return tiny_llama(seed=3)


def test_single_candidate_stretches_collapse_and_expand():
    lm = _lm()
    trace = run(lm, build_settings({"prompt": "the cat", "max_tokens": 60, "selection_threshold": 0.3}))
    cols = units(trace)
    stretches = [u for u in cols if u.collapsed]
    assert stretches and all(u.last - u.first + 1 >= COLLAPSE_MIN for u in stretches)
    assert all(len(trace.steps[i].candidates) == 1 for u in stretches for i in range(u.first, u.last + 1))
    assert sum(u.last - u.first + 1 for u in cols) == len(trace.steps)  # every step in exactly one column
    fig = tree_view(trace)
    runs = next(t for t in fig["data"] if t["name"] == "one-candidate steps")
    assert runs["customdata"] == [u.id for u in stretches]
    opened = tree_view(trace, expanded=frozenset({stretches[0].first}))
    nodes = next(t for t in opened["data"] if t["name"] == "candidate")
    assert f"{stretches[0].first}:0" in nodes["customdata"]


def test_labels_only_where_they_fit_and_the_view_follows_the_newest_steps():
    lm = _lm()
    trace = run(lm, build_settings(LONG))
    fig = tree_view(trace, live=True)
    nodes = next(t for t in fig["data"] if t["name"] == "candidate")
    labels = labels_of(fig, "candidate")
    path = main_path(trace)
    cands = {f"{st.step}:{i}": c for st in trace.steps for i, c in enumerate(st.candidates)}
    for nid in nodes["customdata"]:
        c = cands[nid]
        assert (nid in labels) == (nid in path or c.prob >= LABEL_PROB)
        assert labels.get(nid, show_token(c.shown)[:8]) == show_token(c.shown)[:8]
    # the labels sit on x2, which follows x and is not drawn in the range slider's overview
    assert fig["layout"]["xaxis2"] == {"matches": "x", "overlaying": "x", "visible": False}
    assert all(t.get("xaxis") == "x2" for t in fig["data"] if t["name"].endswith(" labels"))
    assert all(t["mode"] == "markers" for t in fig["data"] if t["name"] in ("candidate", "near miss"))
    lo, hi = fig["layout"]["xaxis"]["range"]
    assert hi - lo <= WINDOW + 1.5 and hi > 199  # the newest steps
    assert fig["layout"]["xaxis"]["rangeslider"]["visible"]  # and an overview of all of them
    assert fig["layout"]["height"] == 470


def test_near_misses_are_drawn_greyed_and_listed_in_the_inspector():
    lm = _lm()
    trace = run(lm, build_settings({"prompt": "the cat", "max_tokens": 5, "selection_threshold": 0.2}))
    for st in trace.steps:
        assert len(st.alternatives) == 3 and all(a["prob"] < 0.2 for a in st.alternatives)
        assert [a["prob"] for a in st.alternatives] == sorted((a["prob"] for a in st.alternatives), reverse=True)
        assert max(a["prob"] for a in st.alternatives) <= min(c.prob for c in st.candidates)
    everything = frozenset(range(len(trace.steps)))  # no collapsed stretches
    misses = next(t for t in tree_view(trace, expanded=everything)["data"] if t["name"] == "near miss")
    assert "miss:0:0" in misses["customdata"] and misses["marker"]["symbol"][0] == "circle-open"
    best = trace.steps[0].alternatives[0]
    labels = labels_of(tree_view(trace, expanded=everything), "near miss")
    assert labels["miss:0:0"] == show_token(best["text"])[:6]  # the token; its probability in the hover
    assert f"p = {best['prob']:.4f}" in misses["hovertext"][0]
    # one label per pair of columns, so neighbouring labels never run into each other
    assert labels and all(int(node.split(":")[1]) % 2 == 0 for node in labels)
    assert "top alternatives not chosen" in node_details(trace, "0:0")


def test_the_heatmap_has_bounded_rows_and_says_why_it_is_empty():
    lm = _lm()
    trace = run(lm, build_settings(LONG))
    fig = heatmap_view(trace)
    cells = next(t for t in fig["data"] if t["name"] == "attention paid")
    rows = len(cells["y"])
    assert cells["x"] == list(range(1, 4))  # as wide as the pruning window, whatever the run's length
    scored = sum(1 for st in trace.steps for c in st.candidates if c.attention_by_step)
    assert 0 < rows < scored  # only the candidates that came near the threshold
    off = heatmap_view(run(lm, build_settings({"prompt": "the cat", "max_tokens": 5})))
    assert "retroactive pruning is off" in off["layout"]["title"]["text"]
    assert "no effect" in curve_view(build_settings({"prompt": "x"}))["layout"]["title"]["text"]


def test_newlines_and_spaces_are_visible_and_never_break_a_group():
    from tempo_core.trace import Candidate, Step
    st = Step(0, 5, 0.1, None, [Candidate(1, "\n", 0.5, row=5), Candidate(2, " ", 0.3, row=6)])
    html = text_view(Trace("m", "tempo", {}, "p", "p", [1], [st]))["steps"][0]
    assert "⏎" in html and "·" in html and "<br>" not in html
    single = Step(1, 6, 0.1, None, [Candidate(1, "\n", 0.9, row=7)])
    assert text_view(Trace("m", "tempo", {}, "p", "p", [1], [single]))["steps"][0].endswith("<br>")


def test_pieces_of_a_multibyte_character_are_shown_repaired():
    from tempo_core.text import repaired_text
    lm = _lm()
    ids = lm.tokenizer("é", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2 and "\ufffd" in lm.decode([ids[0]])  # one character, two byte tokens
    assert repaired_text(lm, ids[0], lm.decode([ids[0]]), [5, 6]) == "…"  # waits for the rest
    assert repaired_text(lm, ids[1], lm.decode([ids[1]]), [5, ids[0]]) == "é"  # completes it
    assert repaired_text(lm, 5, lm.decode([5]), []) is None  # ordinary tokens are shown as they are


def test_a_pruned_candidate_keeps_the_score_that_pruned_it():
    lm = _lm()
    trace = run(lm, build_settings(LONG))
    pruned = [c for st in trace.steps for c in st.candidates if c.pruned_at is not None]
    assert pruned
    for c in pruned:
        assert max(c.attention_by_step) == c.pruned_at  # nothing recorded after the decision
        assert c.attention == sum(c.attention_by_step.values()) / len(c.attention_by_step)


@pytest.mark.parametrize("preserve", [True, False])
def test_the_heatmap_lists_only_candidates_that_could_be_pruned(preserve):
    lm = _lm()
    trace = run(lm, build_settings({**LONG, "max_tokens": 60, "preserve_isolated_tokens": preserve}))
    fig = heatmap_view(trace)
    rows = fig["layout"]["yaxis"]["categoryarray"]
    listed = {tuple(int(x) for x in label.rsplit("(", 1)[1].rstrip(")").split(":")) for label in rows}
    singles = {(st.step, 0) for st in trace.steps if len(st.candidates) == 1}
    pruned = {(st.step, i) for st in trace.steps for i, c in enumerate(st.candidates) if c.pruned_at is not None}
    assert pruned <= listed  # every pruned candidate has its row, with its numbers
    if preserve:
        assert not listed & singles
    else:
        assert listed & singles  # unprotected single candidates can come near the threshold
