"""The lessons of the Learn tab (tabs/learn.py): a guided walkthrough of TEMPO on runs recorded by the engine and
shipped in assets/learn/.

Every lesson is a few sentences next to a real figure with the part it talks about outlined. The recorded traces
make it instant for every student even while the model is busy; `scripts/record_walkthrough.py` makes them again
(tests/figures/test_lessons.py checks that they still equal what the engine produces). Each lesson offers "try it live"
with its settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from tempo_core import Trace

from .curve import curve_view
from .faithfulness import faithfulness_figure
from .heatmap import heatmap_view
from .outlines import one_panel, outline_box, outline_row, outline_step
from .positions import positions_figure
from .recordings import RECORDINGS, first_branch, first_pruned, recorded
from .style import show_token
from .tree import tree_view


def _positions(t: Trace, part: str) -> dict:
    """The positions & mask figure of the first set, its rows (left) or its siblings' mask cells (right) outlined."""
    b = first_branch(t)
    st = t.steps[b]
    fig = one_panel(positions_figure(t, b).to_dict(), "x" if part == "positions" else "x2")
    fig["layout"]["title"]["text"] = (f"Step {b}: {len(st.candidates)} siblings at position {st.position}"
                                      if part == "positions" else f"Step {b}: what each candidate sees")
    first, k = st.candidates[0].row, len(st.candidates)
    # zoom in on the set and the tokens just before it (the whole prompt stays a drag away)
    fig["layout"].setdefault("xaxis", {})["range"] = [first - 10.5, first + k + 0.5]
    fig["layout"].setdefault("yaxis", {})["range"] = [st.position - 10.5, st.position + 1.5]
    fig["layout"].setdefault("xaxis2", {})["range"] = [first - 8.5, first + k - 0.5]
    if part == "positions":
        return outline_box(fig, "x", "y", (first - 0.6, first + k - 0.4), (st.position - 0.8, st.position + 0.8),
                           f"{k} rows, one position", label_left=True)
    return outline_box(fig, "x2", "y2", (first - 0.5, first + k - 0.5), (-0.5, k - 0.5), "siblings hidden",
                       label_left=True)


@dataclass
class Lesson:
    title: str
    body: Callable[[Trace], str]  # markdown about the recorded run (so it names the run's real tokens)
    recording: str
    figure: Callable[[Trace], dict]
    try_live: dict[str, Any] = field(default_factory=dict)  # settings "try it live" fills in

    @property
    def trace(self) -> Trace:
        return recorded(self.recording)

    def settings(self) -> dict[str, Any]:
        return {**RECORDINGS[self.recording], "faithfulness": False, **self.try_live}


def _set_words(trace: Trace, step: int) -> str:
    return " / ".join(f"`{show_token(c.shown)}` ({c.prob:.2f})" for c in trace.steps[step].candidates)


def _greedy_body(t: Trace) -> str:
    first = t.steps[0]
    miss = first.alternatives[0] if first.alternatives else None
    missed = (f"; the grey open circle under it is the best **near miss**, `{show_token(miss['text'])}` "
              f"(p = {miss['prob']:.2f}), one of the tokens greedy throws away" if miss else "")
    return (f"A language model reads the prompt (*“{t.prompt}”*) and gives **every** token of its vocabulary a "
            f"probability of coming next. **Greedy decoding** takes the single most probable one, here "
            f"`{show_token(first.candidates[0].shown)}` (p = {first.candidates[0].prob:.2f}, outlined at step 0), "
            f"appends it and asks again: one token per step, one path. In the tree each column is a step{missed}.")


def _threshold_body(t: Trace) -> str:
    b = first_branch(t)
    return (f"TEMPO keeps **every** token whose probability is at least the **selection threshold** "
            f"(here {t.settings['selection_threshold']}). At step {b} (outlined) more than one passes: "
            f"{_set_words(t, b)}. They form a **set**, stacked in one column of the tree and written "
            f"**[a/b]** in the text. Bigger, brighter circles are more probable.")


def _position_body(t: Trace) -> str:
    b = first_branch(t)
    st = t.steps[b]
    return (f"All tokens of a set go into the **same** sequence, one after another (the figure: physical rows "
            f"across, position ids up), but "
            f"they get the **same position id**, {st.position}, so the model's rotary position encoding (RoPE) "
            f"sees them all as “the token at position {st.position}”. One sequence and one KV cache hold every "
            f"branch at once; no copies of the prompt.")


def _mask_body(t: Trace) -> str:
    b = first_branch(t)
    return (f"The figure: the **mask** of step {b}'s queries. A row is one candidate, a column a token it might "
            f"look at "
            f"(dark = allowed). Every candidate sees the whole prompt and the earlier steps, but **not its "
            f"siblings**: they are alternatives, not a phrase, so none of them may read the others. Rows pruned "
            f"earlier are hidden the same way.")


def _merge_body(t: Trace) -> str:
    b = first_branch(t)
    return (f"Step {b + 1} (outlined) must continue *all* of step {b}'s siblings. Each sibling predicts its own next "
            f"token; TEMPO mixes those predictions, weighted by the siblings' probabilities, into one distribution "
            f"and applies the threshold to that. The grey edges show which tokens each step was built on; the "
            f"orange line is the most probable surviving path.")


def _pruning_body(t: Trace) -> str:
    hit = first_pruned(t)
    if hit is None:
        return "Nothing was pruned in this run."
    st = t.steps[hit[0]]
    c = st.candidates[hit[1]]
    return (f"Later tokens **attend** to earlier ones. **Retroactive pruning** scores each candidate by the "
            f"attention later steps pay it and removes those below the **attention threshold** "
            f"({t.settings['attention_threshold']}): `{show_token(c.shown)}` from step {st.step} (outlined row) "
            f"was pruned after step {c.pruned_at}. Its row is masked from then on, and in the text it is struck "
            f"through. Darker cells = more attention; red outlines: below the threshold then.")


def _curve_body(t: Trace) -> str:
    s = t.settings
    last = t.steps[-1]
    reached = max((st.pruning_threshold for st in t.steps if st.pruning_threshold is not None), default=0.0)
    ended = (f"This run ended at step {last.step} ({t.stop_reason.replace('_', ' ')}) before its "
             f"{s['max_tokens']} steps, so the highest threshold in force was {reached:.3f}"
             if len(t.steps) < s["max_tokens"] else f"It reached {reached:.3f} at the last step")
    return (f"The pruning threshold need not be constant. Here it follows a **Bezier curve** from "
            f"{s['attention_threshold']} at step 0 towards {s['final_threshold']} at step {s['max_tokens'] - 1}, so "
            f"early steps keep their options and later steps are pruned harder. {ended}. The bars are each step's "
            f"set size and the candidates pruned at it. A **ReLU** curve (flat, then rising) is the other shape on "
            f"offer.")


KL_HIGH = 0.5  # nats: a step this far from its branches' mixture is not a faithful summary of them


def _faithfulness_body(t: Trace) -> str:
    f = t.faithfulness or {}
    steps = f.get("steps", [])
    agree = sum(1 for x in steps if x["top_agree"])
    high = sum(1 for x in steps if x["kl"] > KL_HIGH)
    holds = agree >= 0.8 * len(steps) and high == 0
    verdict = ("so here the shortcut holds" if holds else
               "so on this run the shortcut is only rough: where branches disagree, one superposed sequence does not "
               "predict what its branches would")
    return (f"Does one superposed sequence really stand for its branches? The **faithfulness meter** runs each "
            f"branch path as an ordinary sequence, mixes their predictions, and compares that with TEMPO's own "
            f"distribution at each step (KL divergence: 0 means identical). On this run the mean KL is "
            f"{f.get('mean_kl', 0):.3f} nats, the top token agrees at {agree} of {len(steps)} steps (the others are "
            f"the red bars), and {high} step{'s' if high != 1 else ''} have KL above {KL_HIGH}, {verdict}. Now try it "
            f"yourself: **Explore** and press Generate.")


LESSON_STEPS = 9  # tree columns a lesson shows (the part it talks about among them), on a laptop and a phone


def _near(fig: dict, step: int, steps: int) -> dict:
    """Show LESSON_STEPS columns from just before `step`, the rest a drag of the range slider away (the page
    leaves a lesson's window as it is, phones included)."""
    lo = max(-0.6, step - 2.5)
    fig["layout"]["meta"] = "tempo-lesson"
    fig["layout"]["xaxis"]["range"] = [lo, lo + LESSON_STEPS + 0.2]
    if steps > LESSON_STEPS:
        fig["layout"]["xaxis"]["rangeslider"] = {"visible": True, "thickness": 0.07}
    return fig


def _tree(t: Trace, step: int, label: str) -> dict:
    fig = tree_view(t, height=420, labelled=frozenset({step}))
    return outline_step(_near(fig, step, len(t.steps)), step, label)


def _greedy_tree(t: Trace) -> dict:
    """Every step in its own column (no collapsed stretch), so each token and its near misses are visible; the
    first step outlined."""
    fig = tree_view(t, expanded=frozenset(range(len(t.steps))), height=420)
    first = t.steps[0].candidates[0]
    return outline_step(_near(fig, 0, len(t.steps)), 0, f"{show_token(first.shown)} {first.prob:.2f}")


def _heatmap(t: Trace) -> dict:
    fig = heatmap_view(t)
    hit = first_pruned(t)
    if hit is None:
        return fig
    labels = fig["layout"]["yaxis"].get("categoryarray", [])
    row = next((i for i, lab in enumerate(labels) if lab.endswith(f"({hit[0]}:{hit[1]})")), None)
    return outline_row(fig, row, "pruned") if row is not None else fig


LESSONS: list[Lesson] = [
    Lesson("1 · Greedy decoding: one token per step", _greedy_body, "greedy", _greedy_tree,
           {"selection_threshold": 1.0}),
    Lesson("2 · A threshold keeps several tokens", _threshold_body, "tempo",
           lambda t: _tree(t, first_branch(t), "a set")),
    Lesson("3 · The set shares one position", _position_body, "tempo", lambda t: _positions(t, "positions")),
    Lesson("4 · A mask keeps siblings apart", _mask_body, "tempo", lambda t: _positions(t, "mask")),
    Lesson("5 · The next step merges them", _merge_body, "tempo",
           lambda t: _tree(t, first_branch(t) + 1, "merged")),
    Lesson("6 · Attention prunes what nobody looks at", _pruning_body, "tempo", _heatmap),
    Lesson("7 · Thresholds can follow a curve", _curve_body, "curve", curve_view),
    Lesson("8 · Is the superposition faithful?", _faithfulness_body, "tempo",
           lambda t: faithfulness_figure(t).to_dict(), {"faithfulness": True}),
]


def lesson_view(index: int) -> tuple[str, dict, str]:
    """(markdown, figure, position line) of lesson `index` (clamped to the walkthrough)."""
    index = max(0, min(index, len(LESSONS) - 1))
    lesson = LESSONS[index]
    trace = lesson.trace
    fig = json.loads(json.dumps(lesson.figure(trace), default=_plain))  # plain JSON (numpy arrays -> lists)
    return f"### {lesson.title}\n\n{lesson.body(trace)}", fig, f"Lesson {index + 1} of {len(LESSONS)}"


def _plain(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"not JSON: {type(obj).__name__}")


GLOSSARY = """
**Token**: a piece of text the model reads or writes: a word, part of a word, a space or a newline (shown as `·` and
`⏎`). **Probability**: how likely the model thinks a token comes next, from 0 to 1; all tokens together sum to 1.
**Selection threshold**: TEMPO keeps every token at least this probable (1.0 keeps only the most probable one:
greedy decoding). **Set**: the tokens kept at one step, written `[a/b]`. **Logical step / shared position**: one
round of decoding; every token of its set gets the same position id, so the model sees them as alternatives for
the same place in the text. **Mask**: which earlier tokens a token may look at; siblings of a set never see each
other. **Attention**: how much a token looks at each earlier token while predicting the next one.
**Retroactive pruning**: removing a candidate later, when the tokens after it pay it less attention than the
**attention (pruning) threshold**. **Near miss**: a token just below the selection threshold (grey open circle).
**Main path**: the most probable surviving token of every step (orange). **Faithfulness**: how closely TEMPO's
one merged prediction matches running each branch separately (KL divergence: 0 means identical).
"""
