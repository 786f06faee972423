"""The streamed-frame diff: applying it (as gradio_client and the browser do) rebuilds the new frame exactly."""

import random

from gradio_client.utils import apply_diff

from components.figures.tree import tree_view
from components.server.frame_diff import diff
from tempo_core import build_settings, run
from tiny import tiny_llama


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["int", "str", "list", "dict", "none"] if depth < 3 else ["int", "str", "none"])
    if kind == "int":
        return rng.randint(0, 5)
    if kind == "str":
        return rng.choice(["a", "ab", "abc", "b"])
    if kind == "none":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice("xyzw"): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_applying_the_diff_gives_the_new_value_for_random_nested_values():
    rng = random.Random(0)
    for _ in range(3000):
        old, new = random_value(rng), random_value(rng)
        assert apply_diff(old, diff(old, new)) == new


def test_nested_lists_that_shrink_by_several_items():
    """The case Gradio's own diff gets wrong: deletes inside a list inside a list."""
    old = {"data": [{"x": [0, 1, 2, 3, 4, 5]}, {"x": [7, 8, 9]}]}
    new = {"data": [{"x": [0, 1]}, {"x": [7]}]}
    assert apply_diff(old, diff(old, new)) == new


def test_a_tree_that_collapses_a_stretch_streams_correctly():
    lm = tiny_llama(seed=0)
    trace = run(lm, build_settings(dict(prompt="the cat sat on the mat", max_tokens=14, selection_threshold=1.0,
                                         raw_prompt=True)))
    frames = []
    for n in range(1, len(trace.steps) + 1):
        partial = type(trace)(**{**trace.__dict__, "steps": trace.steps[:n]})
        frames.append(tree_view(partial, live=True))
    assert any(len(a["data"][2]["x"]) > len(b["data"][2]["x"]) for a, b in zip(frames, frames[1:]))  # it shrank
    shown = frames[0]
    for frame in frames[1:]:
        shown = apply_diff(shown, diff(shown, frame))
        assert shown == frame
