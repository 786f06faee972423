"""The command line, end to end, in a subprocess (tiny model saved to disk, so `--model PATH` is real)."""

import json
import subprocess
import sys

import pytest
from tiny import tiny_llama

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    lm = tiny_llama(seed=2)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


def cli(*args, env=None, command=("cli.py",)):
    """The command-line program (`python cli.py`; `command=("-m", "tempo_core")` for the engine's own)."""
    import os
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPO_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, cwd=ROOT,
                          env=full_env, timeout=300)


def test_json_output_is_the_whole_trace_and_the_progress_bar_goes_to_stderr(model_dir):
    r = cli("--model", model_dir, "--prompt", "the cat", "--max-tokens", "6", "--threshold", "0.05", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert t["schema_version"] == 1 and t["model"] == model_dir and t["mode"] == "tempo"
    assert t["settings"]["selection_threshold"] == 0.05 and t["prompt"] == "the cat" and t["prompt_token_ids"]
    step = t["steps"][0]
    assert {"step", "position", "selection_threshold", "pruning_threshold", "candidates"} <= step.keys()
    assert {"token_id", "text", "prob", "pruned_at", "attention"} <= step["candidates"][0].keys()
    assert {"text", "clean_text", "stop_reason", "timings"} <= t.keys()
    assert "step" in r.stderr  # the progress bar went to stderr


def test_each_flag_changes_the_run_it_names(model_dir):
    base = ["--model", model_dir, "--prompt", "the cat", "--max-tokens", "8", "--threshold", "0.05", "--json"]
    plain = json.loads(cli(*base).stdout)
    pruned = json.loads(cli(*base, "--use-retroactive-removal", "--attention-threshold", "0.1").stdout)
    assert pruned["settings"]["use_retroactive_pruning"] and pruned["stats"]["pruned"] > 0
    assert plain["stats"]["pruned"] == 0
    greedy = json.loads(cli(*base, "--default-mode").stdout)
    assert greedy["mode"] == "default" and greedy["stats"]["max_set_size"] == 1
    ids = cli("--model", model_dir, "--prompt", "the cat", "--max-tokens", "3", "--show-token-ids")
    assert "<" in ids.stdout and ">" in ids.stdout
    env = json.loads(cli(*base[:-1], "--json", env={"TEMPO_MAX_TOKENS": "2", "TEMPO_SEED": "5"}).stdout)
    assert env["settings"]["seed"] == 5 and env["settings"]["max_tokens"] == 8  # CLI beats env


def test_output_dir_profile_debug_and_cprofile(model_dir, tmp_path):
    out = tmp_path / "out"
    prof = tmp_path / "p.prof"
    r = cli("--model", model_dir, "--prompt", "the cat", "--max-tokens", "5", "--threshold", "0.05",
            "--output-dir", str(out), "--save-visualization", "--use-retroactive-pruning", "--profile",
            "--debug-mode", "--use-cprofile", "--profile-output", str(prof), "--no-cuda-graphs")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "trace.json").read_text())["steps"]
    assert "clean:" in (out / "text.txt").read_text()
    assert (out / "tree.html").stat().st_size > 1000 and (out / "threshold.html").exists()
    assert (out / "attention.html").exists()
    assert "profile: load" in r.stderr and "steps/s" in r.stderr
    assert "CUDA graphs off: switched off (--no-cuda-graphs" in r.stderr
    assert "step 0 pos" in r.stderr  # --debug-mode logs every step
    assert prof.stat().st_size > 0


def test_the_engines_own_command_runs_without_the_figures_and_says_where_they_are(model_dir, tmp_path):
    """`python -m tempo_core` never imports the page's code: it writes the trace, and asks for `cli.py` when
    figures are wanted (before loading any model)."""
    engine = ("-m", "tempo_core")
    r = cli("--model", model_dir, "--prompt", "the cat", "--max-tokens", "3", "--output-dir", str(tmp_path / "a"),
            command=engine)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "a" / "trace.json").read_text())["steps"]
    r = cli("--model", model_dir, "--prompt", "the cat", "--output-dir", str(tmp_path / "b"), "--save-visualization",
            command=engine)
    assert r.returncode == 2 and r.stderr.startswith("error: save_visualization: the engine alone draws no figures")
    assert "python cli.py" in r.stderr and not (tmp_path / "b").exists()


@pytest.mark.parametrize("args,needle", [
    (["--prompt", ""], "prompt: must be a non-empty string"),
    (["--prompt", "x", "--selection-threshold", "1.5"], "selection_threshold: must be a number in [0, 1], got '1.5'"),
    (["--prompt", "x", "--selection-threshold", "nan"], "selection_threshold: must be a number in [0, 1]"),
    (["--prompt", "x", "--max-tokens", "0"], "max_tokens: must be an integer in [1, 2048]"),
    (["--prompt", "x", "--max-tokens", "99999999"], "max_tokens: must be an integer in [1, 2048]"),
    (["--prompt", "x", "--model", "./no/such/model"], "model: path not found: ./no/such/model"),
    (["--prompt", "x", "--complete-pruning-mode", "zap"], "complete_pruning_mode: must be one of"),
    (["--prompt", "x", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_input_exits_nonzero_with_one_clear_line(args, needle):
    r = cli(*args)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_unsupported_model_is_refused(tmp_path):
    from tiny import tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    r = cli("--model", str(tmp_path), "--prompt", "x")
    assert r.returncode != 0 and "no rotary position embeddings" in r.stderr and "Traceback" not in r.stderr


def test_config_file_device_and_dtype(model_dir, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("max_tokens: 3\nselection_threshold: 0.05\nprompt: the cat\n")
    base = ["--model", model_dir, "--config", str(cfg), "--json"]
    fp32 = json.loads(cli(*base, "--device", "cpu").stdout)
    assert fp32["settings"]["max_tokens"] == 3 and len(fp32["steps"]) == 3
    bf16 = json.loads(cli(*base, "--dtype", "bfloat16").stdout)
    p32 = [c["prob"] for st in fp32["steps"] for c in st["candidates"]]
    p16 = [c["prob"] for st in bf16["steps"] for c in st["candidates"]]
    assert p32 != p16  # the weights really ran in bf16
    r = cli(*base, "--device", "cuda")
    assert r.returncode != 0 and "device: cuda requested but no CUDA GPU is available" in r.stderr
    r = cli(*base, "--dtype", "fp8")
    assert r.returncode != 0 and "dtype: must be one of" in r.stderr


def test_tempo_cuda_graphs_is_read_as_yes_or_no(model_dir):
    """TEMPO_CUDA_GRAPHS=0 switches graphs off (the trace says so); a value that is neither yes nor no is refused
    naming the variable, before the model loads."""
    args = ("--model", model_dir, "--prompt", "the cat", "--max-tokens", "2", "--profile")
    off = cli(*args, env={"TEMPO_CUDA_GRAPHS": "0"})
    assert off.returncode == 0 and "CUDA graphs off: switched off" in off.stderr
    bad = cli(*args, env={"TEMPO_CUDA_GRAPHS": "maybe"})
    assert bad.returncode == 2 and "TEMPO_CUDA_GRAPHS" in bad.stderr and "true or false" in bad.stderr
