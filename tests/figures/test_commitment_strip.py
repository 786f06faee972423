"""The commitment strip draws the trace's own commitment record: its numbers, its layers, its clicked step."""

import pytest

from components.figures.commitment_strip import LATE, NO_STRIP, SETTLED, commitment_strip
from tempo_core import build_settings, run
from tiny import tiny_llama

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


@pytest.fixture(scope="module")
def trace():
    lm = tiny_llama(seed=6)
    return run(lm, build_settings({"prompt": "the cat sat", "max_tokens": 8, "raw_prompt": True,
                                   "selection_threshold": 0.03, "max_parallel_tokens": 3, "commitment": True}))


def test_the_strip_is_the_commitment_record(trace):
    c = trace.commitment
    fig = commitment_strip(trace)
    top = fig["data"][0]
    assert top["x"] == [st.step for st in trace.steps] and top["y"] == list(range(1, c["layers"] + 1))
    for layer in range(c["layers"]):
        assert top["z"][layer] == [x["p_final"][layer] for x in c["steps"]]
    marks = {d["name"]: d for d in fig["data"] if d["type"] == "scatter"}
    settled = [(x["step"], x["commit_layer"]) for x in c["steps"] if x["commit_layer"] < c["layers"]]
    late = [(x["step"], x["commit_layer"]) for x in c["steps"] if x["commit_layer"] == c["layers"]]
    assert list(zip(marks["commitment layer"]["x"], marks["commitment layer"]["y"])) == settled
    assert list(zip(marks["settles only at the output"]["x"], marks["settles only at the output"]["y"])) == late
    assert marks["commitment layer"]["marker"]["color"] == SETTLED
    assert marks["settles only at the output"]["marker"]["color"] == LATE
    sets = [x for x in c["steps"] if x["js"] is not None]
    assert sets, "the threshold should make sets"
    js = next(d for d in fig["data"] if d["type"] == "heatmap" and d["yaxis"] == "y2")
    for layer in range(c["layers"]):
        assert js["z"][layer] == [x["js"][layer] if x["js"] is not None else None for x in c["steps"]]
    parted = [(x["step"], x["part_layer"]) for x in sets if x["part_layer"] is not None]
    differ = marks["siblings' top-1 differ from here on"]
    assert list(zip(differ["x"], differ["y"])) == parted
    mean = sum(x["commit_layer"] for x in c["steps"]) / len(c["steps"])
    assert f"layer {mean:.1f} of {c['layers']}" in fig["layout"]["title"]["text"]
    # the hover names the final token and the lens's top tokens at that layer
    first = c["steps"][0]
    assert first["token"] in top["hovertext"][0][0] and first["lens"][0][0][0] in top["hovertext"][0][0]


def test_a_clicked_step_is_outlined_and_a_run_without_record_says_what_to_do(trace):
    shapes = commitment_strip(trace, 2)["layout"]["shapes"]
    assert [(s["x0"], s["x1"]) for s in shapes] == [(1.5, 2.5)]
    assert commitment_strip(trace, 99)["layout"]["shapes"] == []
    bare = type(trace)(**{**trace.__dict__, "commitment": None})
    empty = commitment_strip(bare)
    assert empty["data"] == [] and NO_STRIP[2] in empty["layout"]["title"]["text"]



def test_each_definition_of_commitment_is_computed_from_the_record(trace):
    """Top-1, top-3 and p > 0.5 (NDIF Workbench's three): each step's layer recomputed here from the record's lens and
    p_final, as the first layer from which the condition holds through the output. The strip draws top-1's and
    names it in its title."""
    from components.figures.commitment_strip import DEFINITIONS, OVER_HALF, TOP1, TOP3, commit_layers
    c = trace.commitment

    def first_from(holds):
        return next((i + 1 for i in range(len(holds)) if all(holds[i:])), None)
    expected = {TOP1: [x["commit_layer"] for x in c["steps"]],
                TOP3: [first_from([x["token"] in [t for t, _ in lens] for lens in x["lens"]]) for x in c["steps"]],
                OVER_HALF: [first_from([p > 0.5 for p in x["p_final"]]) for x in c["steps"]]}
    assert expected[TOP1] == [first_from([lens[0][0] == x["token"] for lens in x["lens"]]) for x in c["steps"]]
    for definition in DEFINITIONS:
        assert commit_layers(c, definition) == expected[definition]
    assert commitment_strip(trace)["layout"]["title"]["text"].startswith(f"Commitment strip ({TOP1})")
    with pytest.raises(ValueError, match="definition"):
        commit_layers(c, "top-2")
