"""The live page: decoding in a worker with deltas applied to a replica, figures that stay readable at 200 steps,
comparison of runs."""

from __future__ import annotations

import copy
import threading

import pytest
from gradio.utils import diff

from components.tabs.compare import HISTORY, add_run, choices, compare, numbers_table
from components.figures.inspect import node_details
from components.server.live import apply_delta, delta_of, live_traces
from components.figures.views import (COLLAPSE_MIN, LABEL_PROB, WINDOW, curve_view, heatmap_view, main_path, show_token,
                              text_view, tree_view, units)
from tempo_core import Trace, build_settings, generate, run
from tempo_core.limits import RunStop
from tiny import tiny_llama

LONG = {"prompt": "the cat", "max_tokens": 200, "selection_threshold": 0.05, "use_retroactive_pruning": True,
        "attention_threshold": 0.05}


def labels_of(fig: dict, name: str) -> dict[str, str]:
    """The labels a tree draws for its `name` nodes: {node id: label}."""
    t = next(t for t in fig["data"] if t["name"] == f"{name} labels")
    return dict(zip(t["customdata"], t["text"]))


def _lm():
    return tiny_llama(seed=3)


def test_applying_each_steps_delta_gives_the_engines_trace_at_every_step():
    lm = _lm()
    s = build_settings(LONG)
    replica = Trace("", "", {}, "", "", [])
    pruned_late = 0
    for event in generate(lm, s):
        apply_delta(replica, delta_of(event.trace, s.pruning_window, event.done))
        assert replica.to_dict() == event.trace.to_dict()
        pruned_late += sum(1 for c in event.pruned if c.pruned_at > 0)
    assert pruned_late > 0  # deltas really had to carry changes to earlier steps
    final = event.trace
    for build in (tree_view, heatmap_view, text_view, curve_view):
        assert build(replica) == build(final)


def test_live_frames_end_with_the_finished_trace_and_never_block_decoding():
    lm = _lm()
    s = build_settings(LONG)
    frames = []
    for trace, done in live_traces(lambda: ((e.trace, e.done) for e in generate(lm, s)), s.pruning_window, 0.0):
        frames.append((len(trace.steps), done))
    reference = run(lm, s)
    assert frames[-1] == (len(reference.steps), True)
    decisions = lambda t: [[(c.token_id, c.prob, c.pruned_at, c.attention) for c in st.candidates]  # noqa: E731
                           for st in t.steps]
    assert decisions(trace) == decisions(reference)
    assert [n for n, _ in frames] == sorted(n for n, _ in frames)

    # a consumer that takes its time sees fewer frames, and the decoding is not held back by it
    gate = threading.Event()
    slow = []
    for trace, done in live_traces(lambda: ((e.trace, e.done) for e in generate(lm, s)), s.pruning_window, 0.0):
        slow.append(len(trace.steps))
        gate.wait(0.3 if not slow[1:] else 0)  # the first frame stalls; decoding goes on meanwhile
    assert slow[1] - slow[0] > 1 and slow[-1] == len(reference.steps)


def test_stop_ends_a_live_run_within_a_step():
    lm = _lm()
    s = build_settings(LONG)
    stop = RunStop()
    seen = []
    for trace, done in live_traces(lambda: ((e.trace, e.done) for e in generate(lm, s, stop)), 3, 0.0):
        seen.append(len(trace.steps))
        if len(seen) == 1:
            stop.stop()
            at_stop = len(trace.steps)
    assert trace.stop_reason == "stopped" and done
    assert len(trace.steps) <= at_stop + 2  # the step in flight, at most one more that was already queued


def test_a_frames_diff_carries_the_new_steps_not_the_whole_run():
    lm = _lm()
    s = build_settings(LONG)
    trace = run(lm, s)
    assert len(trace.steps) == 200
    before = copy.deepcopy(trace)
    before.steps = before.steps[:195]
    for view in (lambda t: tree_view(t, live=True), text_view, heatmap_view):
        old, new = view(before), view(trace)
        edits = diff(old, new)
        touched = [e for e in edits if e[0] != "replace" or e[1][:1] == ["steps"]]
        assert edits and len(str(edits)) < len(str(new)) / 5, (len(str(edits)), len(str(new)))
        # text: only the last steps' pieces are touched
        if "steps" in new:
            assert all(e[1][1] >= 195 - s.pruning_window - 1 for e in touched if e[1][:1] == ["steps"])


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


def test_history_keeps_the_last_runs_and_compares_any_two():
    lm = _lm()
    a = run(lm, build_settings({"prompt": "the cat", "max_tokens": 6, "selection_threshold": 0.05})).to_dict()
    b = run(lm, build_settings({"prompt": "hello world", "max_tokens": 6, "selection_threshold": 0.2})).to_dict()
    history = []
    for i in range(HISTORY + 2):
        history = add_run(history, a if i % 2 == 0 else b)
    assert len(history) == HISTORY and [h["id"] for h in history] == list(range(3, HISTORY + 3))
    assert choices(history)[0][1] == HISTORY + 2  # newest first
    tree_a, tree_b, text_a, text_b, numbers, overlay = compare(history, history[-1]["id"], history[-2]["id"])
    assert tree_a != tree_b and text_a["clean"] != text_b["clean"]
    assert "setting `prompt`" in numbers and "setting `selection_threshold`" in numbers
    assert "hello world" in numbers and "the cat" in numbers
    assert any(tr.name == "only in B" for tr in overlay.data)
    same = numbers_table(Trace.from_dict(a), Trace.from_dict(a))
    assert "| settings | same | same |" in same


def test_pieces_of_a_multibyte_character_are_shown_repaired():
    from tempo_core.engine import repaired_text
    lm = _lm()
    ids = lm.tokenizer("é", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2 and "\ufffd" in lm.decode([ids[0]])  # one character, two byte tokens
    assert repaired_text(lm, ids[0], lm.decode([ids[0]]), [5, 6]) == "…"  # waits for the rest
    assert repaired_text(lm, ids[1], lm.decode([ids[1]]), [5, ids[0]]) == "é"  # completes it
    assert repaired_text(lm, 5, lm.decode([5]), []) is None  # ordinary tokens are shown as they are


def test_clicks_expand_stretches_select_nodes_and_open_a_pruned_candidates_rewind():
    import types

    import app as tempo_app
    lm = _lm()
    narrow = run(lm, build_settings({"prompt": "the cat", "max_tokens": 60, "selection_threshold": 0.3}))
    stretch = next(u for u in units(narrow) if u.collapsed)
    out = tempo_app.expand_stretch(narrow.to_dict(), [], types.SimpleNamespace(_data={"node": stretch.id}))
    nodes = next(t for t in out[0]["data"] if t["name"] == "candidate")
    assert f"{stretch.first}:0" in nodes["customdata"] and out[-1] == [stretch.first]
    import gradio as gr
    for bogus in ("run:999999-1000000", "run:x", f"run:{stretch.first}-{stretch.last + 5}"):  # not on the page
        out = tempo_app.expand_stretch(narrow.to_dict(), [], types.SimpleNamespace(_data={"node": bogus}))
        assert all(v == gr.skip() for v in out)  # nothing changes, the expanded list does not grow
    trace = run(lm, build_settings(LONG))
    data = trace.to_dict()
    pruned = next(f"{st.step}:{i}" for st in trace.steps for i, c in enumerate(st.candidates) if c.pruned_at)
    tree, details, pick, rewind, outer, inner = tempo_app.clicked(
        data, [], types.SimpleNamespace(_data={"node": pruned, "source": "tempo-heatmap"}))
    assert pick == pruned and rewind == pruned and "pruned** after step" in details
    assert outer.selected == "research" and inner.selected == "rewind"
    # from the tree, a pruned node opens its details but stays on the tree
    _, _, rewind, outer, _ = tempo_app.clicked_in_tree(data, [], types.SimpleNamespace(_data={"node": pruned}))
    assert rewind == pruned and not hasattr(outer, "selected")
    assert all(v == gr.skip() for v in tempo_app.clicked(data, [], types.SimpleNamespace(_data={"node": "-1:0"})))
    # a node clicked in the tree is ringed by the page itself: only its details come back (the tree is not an
    # output); from the text, the tree is redrawn with the node ringed
    from_tree = tempo_app.clicked_in_tree(data, [], types.SimpleNamespace(_data={"node": "3:0"}))
    assert from_tree[0] == node_details(trace, "3:0") and from_tree[1] == "3:0" and len(from_tree) == 5
    from_text = tempo_app.clicked(data, [], types.SimpleNamespace(_data={"node": "3:0", "source": "tempo-text"}))
    ringed = next(t for t in from_text[0]["data"] if t["name"] == "selected")
    assert (ringed["x"], ringed["y"]) == ([3], [0])


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
