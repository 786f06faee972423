"""Predict then reveal: before a step is shown, the student sees its candidates and the near misses in
alphabetical order, without probabilities, and ticks the ones they think pass the selection threshold; the reveal
marks each pick right or wrong, keeps a running score, and only then asks a question to think about.
"""

from __future__ import annotations

from dataclasses import dataclass

from tempo_core import Step, Trace

from .style import show_token


@dataclass
class Score:
    right: int = 0
    total: int = 0

    def __str__(self) -> str:
        return f"{self.right}/{self.total}" + (f" ({self.right / self.total:.0%})" if self.total else "")


def _choices(st: Step) -> list[tuple[str, float, bool]]:
    """(unique label, probability, passed the threshold) for the step's candidates, then its near misses."""
    texts = [c.shown for c in st.candidates] + [a["text"] for a in st.alternatives]
    probs = [c.prob for c in st.candidates] + [a["prob"] for a in st.alternatives]
    passed = [True] * len(st.candidates) + [False] * len(st.alternatives)
    seen: dict[str, int] = {}
    labels = []
    for t in texts:
        label = show_token(t)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return list(zip(labels, probs, passed))


def prediction_choices(st: Step) -> list[str]:
    """The tokens a student chooses from: the step's candidates and its near misses, alphabetically (the order
    gives nothing away), each label unique."""
    return sorted(label for label, _, _ in _choices(st))


@dataclass
class Reveal:
    marks: list[tuple[str, float, bool, bool]]  # (token, probability, passed the threshold, the student ticked it)
    right: int  # choices judged correctly (ticked and passed, or left and did not)
    total: int


def score_prediction(st: Step, picked: list[str]) -> Reveal:
    """Each choice is right when the student ticked it exactly if it passed the threshold."""
    chosen = set(picked)
    marks = sorted(((label, p, ok, label in chosen) for label, p, ok in _choices(st)), key=lambda m: -m[1])
    right = sum(ok == ticked for _, _, ok, ticked in marks)
    return Reveal(marks, right, len(marks))


def prediction_question(mode: str, st: Step) -> str:
    """What the student is asked before a hidden step: in a greedy run (mode "default") which token is picked, in
    the others which tokens pass the step's selection threshold."""
    if mode == "default":
        return f"**Step {st.step}: which token will greedy decoding pick?** Tick it, then press **Reveal**."
    return (f"**Step {st.step}: which tokens pass the selection threshold {st.selection_threshold:g}?** Tick them, "
            f"then press **Reveal**.")


def reveal_markdown(st: Step, reveal: Reveal, score: Score) -> str:
    """The reveal as a short list (it fits the narrow column of a phone or the form). A kept token below the
    threshold is the most probable one, kept alone because nothing passed: it says so."""
    lines = []
    for label, p, ok, ticked in reveal.marks:
        verdict = "✓" if ok == ticked else "✗"
        you = "you ticked it" if ticked else "you left it"
        fate = "not kept" if not ok else ("kept" if p >= st.selection_threshold else
                                          "kept: nothing passed the threshold, so the most probable token is kept")
        lines.append(f"- **{verdict}** `{label}` p = {p:.3f}: {fate} ({you})")
    return (f"**Step {st.step}: {reveal.right} of {reveal.total} right** · running score {score}\n\n"
            f"Threshold {st.selection_threshold:g}: every token at or above it is kept (up to max_parallel_tokens); "
            f"when none is, the most probable one is kept alone.\n\n" + "\n".join(lines))


def reflection_question(trace: Trace, index: int) -> str:
    """A question to think about, asked after the reveal (never before)."""
    st = trace.steps[index]
    pruned_now = [c for s in trace.steps for c in s.candidates if c.pruned_at == index]
    if pruned_now:
        return (f"**Think:** This step pruned {', '.join(repr(show_token(c.shown)) for c in pruned_now)}: later tokens paid "
                "it too little attention. Would you have cut it? What would the text lose if it stayed?")
    if len(st.candidates) > 1:
        top = max(st.candidates, key=lambda c: c.prob)
        return (f"**Think:** {len(st.candidates)} tokens share position {st.position}. The next step sees all of them at "
                f"once: how much should it trust {show_token(top.shown)!r} over the others, and why?")
    if st.alternatives and st.alternatives[0]["prob"] > st.selection_threshold / 2:
        alt = st.alternatives[0]
        return (f"**Think:** {show_token(alt['text'])!r} missed the threshold with p = {alt['prob']:.2f}. At what threshold "
                "would it have joined the set, and would the text still make sense?")
    return "**Think:** Only one token passed. Is the model sure here, or is the threshold too strict? Look at the near misses."
