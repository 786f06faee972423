"""Pure helpers over a trace: the tree as it was at a step, node details, node choices."""

from __future__ import annotations

import re

from tempo_core.steer import lower_threshold_preview
from tempo_core.trace import Candidate, Trace

from .style import show_token


def code(text: str, in_table: bool = False) -> str:
    """`text` as a Markdown code span, shown literally (no entities: a code span is not HTML, and the page's
    Markdown is sanitised anyway): a fence longer than any run of backticks in it, and `|` escaped in a table."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    body = text.replace("|", "\\|") if in_table else text
    return f"{fence}{pad}{body}{pad}{fence}"


def find_node(trace: Trace, node: str) -> tuple[int, int, Candidate] | None:
    """Validate a 'step:index' id coming back from the browser."""
    try:
        s, i = (int(x) for x in str(node).split(":"))
        if s < 0 or i < 0:
            return None
        return s, i, trace.steps[s].candidates[i]
    except (ValueError, IndexError):
        return None


def node_choices(trace: Trace) -> list[tuple[str, str]]:
    return [(f"step {st.step} · {show_token(c.shown)} · p={c.prob:.3f}{' · pruned' if c.pruned_at is not None else ''}",
             f"{st.step}:{i}") for st in trace.steps for i, c in enumerate(st.candidates)]


def node_details(trace: Trace, node: str) -> str:
    found = find_node(trace, node)
    if found is None:
        return "Select a candidate (click a token in the text or a node in the tree, or pick one from the list)."
    s, i, c = found
    st = trace.steps[s]
    if c.pruned_at is not None:
        fate = "not chosen by the search" if trace.mode == "mcts" else f"**pruned** after step {c.pruned_at}"
    else:
        fate = "kept (its whole set failed; `keep_unattended`)" if c.unattended else "alive"
    row = f", physical row {c.row}" if c.row >= 0 else ""  # an MCTS node has no row of a shared sequence
    lines = [f"### {code(show_token(c.shown))} — token id {c.token_id}",
             f"- logical step **{s}**, shared position id **{st.position}**{row}",
             f"- probability **{c.prob:.4f}** (rank {i + 1} of {len(st.candidates)} in its set)",
             f"- selection threshold {st.selection_threshold:.3f}" + (
                 f", pruning threshold in force {st.pruning_threshold:.4f}" if st.pruning_threshold is not None else ""),
             f"- fate: {fate}"]
    if c.attention is not None:
        per = ", ".join(f"step {k}: {v:.4f}" for k, v in sorted(c.attention_by_step.items()))
        lines.append(f"- attention received (mean) **{c.attention:.4f}** — {per}")
    if c.visits is not None:
        lines.append(f"- MCTS: {c.visits} visits, mean value {c.value:.3f}")
    if st.alternatives:
        alts = ", ".join(f"{code(show_token(a['text']))} {a['prob']:.4f}" for a in st.alternatives)
        lines.append(f"- top alternatives not chosen: {alts}")
    return "\n".join(lines)


def what_if_lower(trace: Trace, node: str) -> str:
    """The set of the chosen candidate's step, with what a lower threshold would have added (a Markdown table)."""
    found = find_node(trace, node)
    if found is None or trace.mode != "tempo":
        return "Pick a candidate of a TEMPO run."
    step = found[0]
    cap = trace.settings.get("max_parallel_tokens")
    lines = []
    for r in lower_threshold_preview(trace, step):
        if r["status"] == "joins":
            fate = f"joins at a threshold ≤ {r['joins_at']:.4f}"
        else:
            fate = {"kept": "in the set",
                    "capped": f"passed the threshold, but the set was full (max_parallel_tokens = {cap}); a lower "
                              "threshold does not add it",
                    "by_hand": "passed the threshold; this set was chosen by hand (continue from here)",
                    "eos": "passed the threshold and was dropped (end of text ends a run only as the most probable "
                           "token, after min_steps); it took a place in the set all the same"}[r["status"]]
        if r["needs_cap"]:
            fate += f"; it joins once max_parallel_tokens is {r['needs_cap']} or more"
        prob = "—" if r["prob"] is None else f"{r['prob']:.4f}"
        token = r["text"] if r["status"] == "eos" else code(show_token(r["text"]), in_table=True)
        lines.append(f"| {token} | {prob} | {fate} |")
    return (f"**Step {step} at lower thresholds** (this run: {trace.steps[step].selection_threshold:g}). A token joins "
            f"the set once the threshold is at or below its probability and the set has room. Each threshold shown "
            f"is 0.00001 below the probability, rounded down (a forward shared with other runs moves probabilities "
            f"by a few millionths), so a run at it selects the token when the earlier steps are as they were here "
            f"(a fresh run at a lower threshold may change them, and so this step).\n\n"
            f"| token | probability | |\n|---|---|---|\n"
            + "\n".join(lines))
