"""Figure builders and inspectors are plain functions of a recorded trace."""

import html
import json

import pytest

from components.figures.inspect import find_node, node_choices, node_details
from components.figures.report import (attention_figure, report_html, text_html, threshold_figure, tree_figure,
                                       tree_graph)
from components.figures.tree import units
from tempo_core import build_settings, run
from tempo_core.schedule import threshold_curve
from tempo_core.trace import Candidate, Step, Trace, rewind
from tiny import tiny_llama


def recorded() -> Trace:
    """A hand-made trace: step 0 has 3 candidates (one pruned after step 2), step 1 one, step 2 two."""
    s = build_settings(dict(prompt="p", max_tokens=4, use_retroactive_pruning=True, dynamic_threshold=True,
                            attention_threshold=0.01, final_threshold=0.1))
    steps = [
        Step(0, 5, 0.1, 0.01, [Candidate(10, " a<b>", 0.6, row=5, attention_by_step={1: 0.2, 2: 0.1}, attention=0.15),
                               Candidate(11, " c", 0.3, row=6, attention_by_step={1: 0.05, 2: 0.04}, attention=0.045),
                               Candidate(12, " d", 0.1, row=7, pruned_at=2, attention_by_step={1: 0.001, 2: 0.002},
                                         attention=0.0015)]),
        Step(1, 6, 0.1, 0.04, [Candidate(13, " e", 0.9, row=8)], hidden_rows=[]),
        Step(2, 7, 0.1, 0.07, [Candidate(14, " f", 0.5, row=9), Candidate(15, "\n", 0.4, row=10)]),
    ]
    return Trace("m", "tempo", s.to_dict(), "p", "p", [1, 2, 3, 4, 5], steps, stop_reason="max_tokens")


def test_tree_graph_nodes_and_edges_follow_visibility():
    t = recorded()
    g = tree_graph(t)
    assert g.number_of_nodes() == 6
    # step 0 -> step 1: all three were visible (d was pruned only after step 2); step 1 -> 2: one to two
    assert g.number_of_edges() == 3 * 1 + 1 * 2
    assert {n for n in g.nodes if g.nodes[n]["on_path"]} == {"0:0", "1:0", "2:0"}


def test_tree_figure_marks_pruned_nodes_and_the_clean_path():
    fig = tree_figure(recorded(), selected="0:1")
    by_name = {tr.name: tr for tr in fig.data}
    nodes = by_name["candidate"]
    assert list(nodes.customdata) == ["0:0", "0:1", "0:2", "1:0", "2:0", "2:1"]
    assert list(nodes.marker.symbol) == ["circle", "circle", "x", "circle", "circle", "circle"]
    assert "pruned after step 2" in nodes.hovertext[2]
    assert "a&lt;b&gt;" in nodes.hovertext[0]  # token text is escaped
    path = by_name["main path"]
    assert [x for x in path.x if x is not None] == [0, 1, 1, 2]
    assert "selected" in by_name
    assert fig.layout.uirevision == "tempo"
    early = {tr.name: tr for tr in tree_figure(rewind(recorded(), 0)).data}
    assert list(early["candidate"].marker.symbol) == ["circle"] * 3  # before the pruning decision


def test_attention_figure_shows_candidates_at_risk_and_the_threshold():
    fig = attention_figure(recorded())
    heat = next(tr for tr in fig.data if tr.name == "attention paid")
    # " a" (score 0.15) was never near the thresholds (0.04, 0.07); " c" (0.045) and " d" (pruned) were
    assert [row[0] for row in heat.customdata] == ["0:1", "0:2"]
    assert list(heat.x) == [1, 2] and [list(r) for r in heat.z] == [[0.05, 0.04], [0.001, 0.002]]
    scale = heat.colorscale  # light for little attention, dark for much, whatever plotly.js calls "Blues"
    assert scale[0][1] == "#f7fbff" and scale[-1][1] == "#08306b"
    below = next(tr for tr in fig.data if tr.name == "below the threshold then")
    assert list(below.x) == [2, 1, 2]  # c at 2 steps later (0.04 < 0.07); d both times
    marks = next(tr for tr in fig.data if tr.name.startswith("pruned here"))
    assert list(marks.x) == [2] and list(marks.customdata) == ["0:2"]
    assert "0.010–0.070" in fig.layout.title.text  # the schedule over the run (steps 0..2)


def test_threshold_figure_values_come_from_the_schedule():
    t = recorded()
    fig = threshold_figure(t, current_step=1)
    curve = next(tr for tr in fig.data if tr.name == "pruning threshold")
    assert list(curve.y) == pytest.approx(threshold_curve(build_settings(t.settings)))
    sizes = next(tr for tr in fig.data if tr.name == "set size")
    assert list(sizes.y) == [3, 1, 2]
    pruned = next(tr for tr in fig.data if tr.name == "pruned at step")
    assert list(pruned.y) == [0, 0, 1]
    assert "Bezier" in fig.layout.title.text
    relu = threshold_figure(build_settings(dict(dynamic_threshold=True, use_relu=True, max_tokens=10)))
    assert "ReLU" in relu.layout.title.text and len(relu.data[0].y) == 10


def test_text_html_strikes_pruned_and_escapes():
    html = text_html(recorded())
    assert 'class="tok pruned"' in html and "a&lt;b&gt;" in html and "<b>" not in html.split("clean")[0]
    assert html.count('data-node="') == 6


def test_rewind_undoes_later_pruning():
    t = recorded()
    before = rewind(t, 1)
    assert len(before.steps) == 2 and before.steps[0].candidates[2].pruned_at is None
    assert before.steps[0].candidates[2].attention_by_step == {1: 0.001}
    after = rewind(t, 2)
    assert after.steps[0].candidates[2].pruned_at == 2
    assert "~~" not in before.text and "~~ d~~" in after.text


def test_node_details_and_choices_validate_ids():
    t = recorded()
    assert find_node(t, "9:9") is None and find_node(t, "<script>") is None
    d = node_details(t, "0:2")
    assert "pruned** after step 2" in d and "token id 12" in d and "0.0015" in d
    assert len(node_choices(t)) == 6


def test_details_and_the_candidate_list_show_tokens_as_the_page_shows_them():
    """An apostrophe or a backtick in a token stays itself (no `&#x27;` in a code span), whitespace shows as · and
    ⏎ in the list too, and an MCTS node (no row of a shared sequence) names no physical row."""
    t = recorded()
    t.steps[0].candidates[0].text, t.steps[0].candidates[1].text = "'s", " `a`\n"
    for c in t.steps[0].candidates[:2]:
        c.display = None
    d = node_details(t, "0:0")
    assert "### `'s`" in d and "&#" not in d
    assert "### ``·`a`⏎``" in node_details(t, "0:1")  # a fence longer than the backticks inside
    labels = [label for label, _ in node_choices(t)]
    assert labels[1].startswith("step 0 · ·`a`⏎ · p=") and "\\n" not in labels[1]
    t.mode = "mcts"
    t.steps[0].candidates[0].row = -1
    assert "physical row" not in node_details(t, "0:0")


def test_figures_of_a_real_run_and_report(tmp_path):
    lm = tiny_llama(seed=4)
    trace = run(lm, build_settings(dict(prompt="the cat", max_tokens=6, selection_threshold=0.05,
                                        use_retroactive_pruning=True, attention_threshold=0.1)))
    fig = tree_figure(trace)
    nodes = sum(len(tr.customdata) for tr in fig.data if tr.name in ("candidate",))
    collapsed = [u for u in units(trace) if u.collapsed]
    assert nodes == sum(len(st.candidates) for st in trace.steps) - sum(u.last - u.first + 1 for u in collapsed)
    report = report_html(trace)
    assert report.count("plotly.js") >= 1 and report.count('class="plotly-graph-div"') == 3
    back = Trace.from_json(json.dumps(trace.to_dict()))
    assert tree_figure(back).to_dict() == fig.to_dict()  # a downloaded trace replays to the same picture


def test_the_html_report_carries_the_measured_faithfulness():
    from components.figures.recordings import recorded
    from tempo_core.analysis.report import faithfulness_line
    measured = recorded("tempo")
    report = report_html(measured)
    f = measured.faithfulness
    assert html.escape(faithfulness_line(f)) in report and f"{f['mean_kl']:.4f}" in report
    assert "Faithfulness —" in report  # its figure too
    # the run's own figures first, then the faithfulness section: its numbers, its figure and w
    assert report.index("Token tree") < report.index("<h2>Faithfulness</h2>") < report.index("Faithfulness —")
    assert report.count('class="plotly-graph-div"') == 5  # tree, heatmap, curve, faithfulness, threads (w)
    assert "<h2>Faithfulness</h2>" not in report_html(recorded("greedy"))
    nan = Trace.from_dict({**measured.to_plain(), "faithfulness": {**f, "clean_ppl": None, "greedy_ppl": None}})
    assert "clean-text perplexity n/a (no text)" in report_html(nan)  # a run of no text still reports


EVIL = "</script><script>alert('x')</script><img src=x onerror=alert(1)>"


def test_the_report_escapes_every_trace_string():
    trace = run(tiny_llama(seed=3), build_settings({"prompt": EVIL, "max_tokens": 3}))
    trace.mode, trace.stop_reason, trace.model = EVIL, EVIL, EVIL
    trace.steps[0].candidates[0].text = EVIL
    page = report_html(trace)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;/script&gt;" in page


def test_the_html_report_carries_the_commitment_strip_when_measured():
    trace = run(tiny_llama(seed=3), build_settings({"prompt": "the cat", "max_tokens": 4, "selection_threshold": 0.05,
                                                    "commitment": True}))
    report = report_html(trace)
    assert "Commitment strip" in report and report.count('class="plotly-graph-div"') == 4
    assert report.index("Token tree") < report.index("Commitment strip")  # under the tree, as on the page
