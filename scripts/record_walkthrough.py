"""Record the Learn tab's runs on the embedded model into assets/learn/<name>.json.

    .venv/bin/python scripts/record_walkthrough.py

Run it again whenever the engine changes what it produces (tests/figures/test_lessons.py says so when it does).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.figures.recordings import LEARN_DIR, RECORDINGS  # noqa: E402
from tempo_core import build_settings, load_model, run  # noqa: E402


def main() -> None:
    lm = load_model()
    LEARN_DIR.mkdir(parents=True, exist_ok=True)
    for name, settings in RECORDINGS.items():
        trace = run(lm, build_settings(settings))
        trace.timings = {}  # machine-dependent; the lessons never show them
        path = LEARN_DIR / f"{name}.json"
        path.write_text(trace.to_json(indent=1) + "\n", encoding="utf-8")
        print(f"{path.relative_to(LEARN_DIR.parents[1])}: {len(trace.steps)} steps, "
              f"{sum(len(s.candidates) for s in trace.steps)} candidates, {trace.stats.get('pruned', 0)} pruned")


if __name__ == "__main__":
    main()
