"""The Research tab's Study view: the bundled results as shipped, and a small study run here showing exactly the
numbers the study code computes, with a progress bar, within the server's budget."""

from __future__ import annotations

import json
from dataclasses import replace

from server.page_client import PageClient
from tiny import tiny_llama

from components.figures.study import study_figure
from components.tabs.research import bundled_study
from tempo_core.analysis.report import study_table
from tempo_core.analysis.study import BUNDLED_RESULTS, QUICK, load_prompts, study_iter
from tempo_core.serving.limits import Limits


def test_the_bundled_results_are_the_shipped_json_and_its_table():
    result = bundled_study()
    assert result is not None, "assets/study/results.json is shipped with the app"
    assert result == json.loads(BUNDLED_RESULTS.read_text()) and len(result["records"]) >= 100
    text = study_table(result)
    assert f"{len(result['records'])} prompts" in text
    a = result["summary"]["attention"]["all"]["ratio"]
    assert f"{a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}]" in text


def test_a_small_study_here_shows_what_the_study_computes(live_server):
    lm = tiny_llama(seed=3)
    url, fastapi_app = live_server(lm)
    browser = PageClient(url, fastapi_app, "study")
    seen: list = []
    heading, figure, markdown = browser.call("run_study", [2], seen=seen, timeout=300)["data"]
    *_, (_, direct) = list(study_iter(lm, replace(QUICK, max_prompts=2), load_prompts()))
    direct = json.loads(json.dumps(direct))
    assert heading.startswith("**Run here**: tiny-llama-3, 2 prompts") and markdown == study_table(direct)
    expected = study_figure(direct)["data"][0]
    assert figure["data"][0]["x"] == expected["x"] and figure["data"][0]["y"] == expected["y"]
    bars = [p["desc"] for m in seen if m.get("msg") == "progress" for p in m.get("progress_data") or []]
    assert bars[0] == "study: 0 of 2 prompts done" and "study: 1 of 2 prompts done" in bars  # a bar from the start
    back = browser.call("show_bundled", [])["data"]  # and the bundled results come back without a reload
    bundled = bundled_study()
    assert back[0].startswith("**Bundled results**") and back[2] == study_table(bundled)
    for bad in (0, 6, 2.5):
        out = browser.call("run_study", [bad])["data"]
        assert out[2].startswith("**Error:** study prompts: must be an integer in [1, 5]"), out[1]


def test_a_study_beyond_the_budget_is_refused_before_it_starts(live_server):
    url, fastapi_app = live_server(tiny_llama(seed=3), limits=Limits(max_forward_passes=300))
    out = PageClient(url, fastapi_app, "budget").call("run_study", [5])["data"]
    assert out[2].startswith("**Error:** study prompts: 5 prompts need up to ") and "allows 300 per" in out[2]
