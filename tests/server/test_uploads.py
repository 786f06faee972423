"""Uploaded traces are checked field by field against this server's limits; a bad one is a message, never a crash."""

from __future__ import annotations

import json
import re

import pytest
from tiny import tiny_llama

from components.server.uploads import read_trace_file
from tempo_core import build_settings, run


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


def _good(lm) -> dict:
    return run(lm, build_settings({"prompt": "the cat", "max_tokens": 4, "selection_threshold": 0.05,
                                   "use_retroactive_pruning": True})).to_dict()


def _set(data: dict, path: str, value) -> dict:
    data = json.loads(json.dumps(data))
    *head, last = path.split(".")
    node = data
    for part in head:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize("path,value,message", [
    ("steps.0.candidates.0.prob", "high", "steps[0].candidates[0].prob: must be a finite number"),
    ("steps.0.candidates.0.prob", float("nan"), "steps[0].candidates[0].prob: must be a finite number"),
    ("steps.0.candidates.0.prob", 7, "steps[0].candidates[0].prob: must be in [0, 1]"),
    ("steps.0.candidates.0.token_id", -3, "steps[0].candidates[0].token_id: must be an integer in [0, 2147483647]"),
    ("steps.0.candidates.0.token_id", 1e30, "steps[0].candidates[0].token_id: must be an integer in [0, 2147483647]"),
    ("steps.0.candidates.0.token_id", 2**70, "steps[0].candidates[0].token_id: must be an integer in [0, 2147483647]"),
    ("steps.0.candidates.0.text", "a\ud800", "steps[0].candidates[0].text: must be valid Unicode text; character 1"),
    ("steps.0.alternatives.0.text", "\udfff", "steps[0].alternatives[0].text: must be valid Unicode text"),
    ("steps.0.candidates.0.text", ["a"], "steps[0].candidates[0].text: must be a string"),
    ("steps.0.candidates.0.evil", 1, "steps[0].candidates[0]: unknown field 'evil'"),
    ("steps.0.candidates", [], "steps[0].candidates: must be a list of 1 to 16 candidates"),
    ("steps.1.step", 7, "steps[1].step: must be 1"),
    ("steps.0.candidates.0.attention_by_step", [1], "steps[0].candidates[0].attention_by_step: must be an object"),
    ("steps.0.candidates.0.attention_by_step", {"x": 1}, "attention_by_step: keys must be step numbers, got 'x'"),
    ("steps.0.candidates.0.attention_by_step", 5, "steps[0].candidates[0].attention_by_step: must be an object"),
    ("steps.0.candidates.0.attention_by_layer", {"1": 7}, "attention_by_layer[1]: must be an object, got 7"),
    ("timings", 5, "timings: must be an object, got 5"),
    ("settings", [1, 2], "settings: must be an object of settings"),
    ("settings", {"selection_threshold": 5}, "settings.selection_threshold: must be a number in [0, 1]"),
    ("mode", "<script>", "mode: must be one of tempo, default, mcts"),
    ("steps", "many", "steps: must be a list"),
    ("schema_version", 99, "schema_version: this build reads 1"),
    ("timings.total_ms", {"deep": [[[]]]}, "timings.total_ms: must be a finite number"),
])
def test_uploaded_traces_are_checked_field_by_field(lm, tmp_path, path, value, message):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_set(_good(lm), path, value)))
    with pytest.raises(ValueError) as exc:
        read_trace_file(str(f), 200, 16)
    assert str(exc.value) == "not a TEMPO trace: " + message or message in str(exc.value), str(exc.value)
    assert str(exc.value).count("not a TEMPO trace") == 1


def test_uploads_that_are_not_json_too_deep_too_long_or_too_big_are_refused_clearly(lm, tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_good(lm)))
    assert len(read_trace_file(str(f), 200, 16).steps) == 4
    cases = [("{oops", "not JSON"), ("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("[1]", "trace: must be an object")]
    for body, needle in cases:
        f.write_text(body)
        with pytest.raises(ValueError, match=re.escape(needle)):
            read_trace_file(str(f), 200, 16)
    data = _good(lm)
    data["steps"] = [dict(data["steps"][0], step=i) for i in range(1000)]
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"steps: this server shows at most 200 steps, the trace has 1000"):
        read_trace_file(str(f), 200, 16)
    f.write_bytes(b" " * 2_000_001)
    with pytest.raises(ValueError, match="this server reads traces up to 2 MB"):
        read_trace_file(str(f), 200, 16, max_bytes=2_000_000)


def test_a_bad_upload_is_a_message_in_the_page(lm, tmp_path, monkeypatch, built_page):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # where Gradio keeps what it received
    site = built_page(lm)
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_set(_good(lm), "steps.0.candidates.0.prob", "x")))
    out = site.explore.replay.load_trace(str(f))
    assert out[site.page.view.status].startswith("**Error:** not a TEMPO trace: steps[0].candidates[0].prob")


def test_a_measured_trace_with_single_threadedness_is_read_back_and_its_w_is_checked(lm, tmp_path):
    data = run(lm, build_settings({"prompt": "the cat", "max_tokens": 4, "selection_threshold": 0.05,
                                   "faithfulness": True, "faithfulness_paths": 4})).to_plain()
    assert data["faithfulness"]["threaded_steps"] > 0
    f = tmp_path / "t.json"
    f.write_text(json.dumps(data))
    assert read_trace_file(str(f), 200, 16).faithfulness == data["faithfulness"]
    older = json.loads(json.dumps(data))  # a trace saved before the fit existed
    for key in ("mean_w", "mean_top_share", "threaded_steps"):
        del older["faithfulness"][key]
    for st in older["faithfulness"]["steps"]:
        del st["w"], st["top_share"]
    f.write_text(json.dumps(older))
    assert read_trace_file(str(f), 200, 16).faithfulness == older["faithfulness"]
    step = next(i for i, x in enumerate(data["faithfulness"]["steps"]) if x["w"] is not None)
    for path, value, message in ((f"faithfulness.steps.{step}.w", 1.5, f"faithfulness.steps[{step}].w: must be in [0, 1]"),
                                 ("faithfulness.mean_w", "x", "faithfulness.mean_w: must be a finite number or null")):
        f.write_text(json.dumps(_set(data, path, value)))
        with pytest.raises(ValueError, match=re.escape(message)):
            read_trace_file(str(f), 200, 16)


def test_an_integer_of_thousands_of_digits_is_refused_naming_its_field(lm, tmp_path):
    """Python's int() refuses over 4,300 digits with a message that names no field (the page showed it raw)."""
    f = tmp_path / "t.json"
    text = json.dumps(_good(lm))
    token_id = _good(lm)["steps"][0]["candidates"][0]["token_id"]
    f.write_text(text.replace(f'"token_id": {token_id}', '"token_id": ' + "7" * 5000, 1))
    with pytest.raises(ValueError) as exc:
        read_trace_file(str(f), 200, 16)
    assert str(exc.value).startswith("not a TEMPO trace: steps[0].candidates[0].token_id: "), str(exc.value)
    assert "4300" not in str(exc.value)
