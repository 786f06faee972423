"""Per-logical-step cost of TEMPO against HF greedy and beam search, in one process.

    python bench/bench_steps.py                          # embedded SmolLM2-135M on this machine
    python bench/bench_steps.py --random-config llama3b  # random weights, Llama-3.2-3B shape (GPU)

Times are medians over interleaved rounds (variants run round-robin so drift hits all alike); ratios are
paired: each round's variant time over the same round's greedy time, then the median. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempo_core import build_settings, load_model, run, wrap_model  # noqa: E402
from tempo_core.baseline import beam_search  # noqa: E402
from tempo_core.events import encode_prompt  # noqa: E402

PROMPTS = ["What is the capital of France?", "Explain the theory of relativity simply.",
           "Write a haiku about servers.", "List three uses of a paperclip."]


def random_model(kind: str, device: str, dtype: str):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers
    shapes = {"llama3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                              num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                              rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                              tie_word_embeddings=True)}
    cfg = LlamaConfig(**shapes[kind], bos_token_id=1, eos_token_id=2, pad_token_id=2)
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dt)
    # a word-level tokenizer over words of the prompts: ids only need to exist, not to mean anything
    words = sorted({w for p in PROMPTS for w in p.split()} | {"<s>", "</s>", "<unk>"})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token="</s>")
    model.generation_config.eos_token_id = 2
    return wrap_model(model, fast, name=f"random-{kind}-{dtype}")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def greedy_step_ms(lm, ids: list[int], n: int) -> float:
    """(time for n new tokens - time for 1) / (n - 1): decode steps only, prefill excluded."""
    x = torch.tensor([ids], device=lm.device)
    kw = dict(attention_mask=torch.ones_like(x), do_sample=False, temperature=None, top_p=None, top_k=None,
              pad_token_id=2)

    def timed(m: int) -> float:
        sync(lm.device)
        t = time.perf_counter()
        with torch.inference_mode():
            lm.model.generate(x, max_new_tokens=m, min_new_tokens=m, **kw)
        sync(lm.device)
        return time.perf_counter() - t
    return (timed(n) - timed(1)) / (n - 1) * 1e3


def static_step_ms(lm, ids: list[int], n: int, beams: int = 1) -> float | None:
    """HF `generate` on a `StaticCache` (what `cache_implementation="static"` makes; transformers compiles the
    decoding forward; the first calls pay the compile, so each length is called once before it is timed): the fastest greedy (or beam
    search) a user can pick. None where transformers refuses (static beam search on some versions)."""
    from transformers import StaticCache
    x = torch.tensor([ids], device=lm.device)
    kw = dict(attention_mask=torch.ones_like(x), do_sample=False, temperature=None, top_p=None, top_k=None,
              pad_token_id=2, num_beams=beams)

    def timed(m: int) -> float:
        # one cache length for every call: a static cache sized per call would recompile at each new length
        cache = StaticCache(config=lm.model.config, max_cache_len=len(ids) + n + 1)
        sync(lm.device)
        t = time.perf_counter()
        with torch.inference_mode():
            lm.model.generate(x, max_new_tokens=m, min_new_tokens=m, past_key_values=cache, **kw)
        sync(lm.device)
        return time.perf_counter() - t
    # a user's plain model runs SDPA; TEMPO's registered attention (a Python function with per-run recording)
    # breaks the compiled graph at every layer, so the anchor must not run through it
    previous = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("sdpa")
    try:
        timed(n), timed(1)  # compile / warm up
        return (timed(n) - timed(1)) / (n - 1) * 1e3
    except Exception as exc:  # noqa: BLE001 - reported in the table, not fatal
        print(f"static cache, {beams} beams: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
        return None
    finally:
        lm.model.set_attn_implementation(previous)


def beam_step_ms(lm, ids: list[int], beams: int, n: int) -> float:
    return (beam_search(lm, ids, beams, n)["seconds"] - beam_search(lm, ids, beams, 1)["seconds"]) / (n - 1) * 1e3


def tempo_step_ms(lm, s) -> tuple[float, float]:
    sync(lm.device)
    trace = run(lm, s)
    sync(lm.device)
    return trace.timings["mean_step_ms"], trace.stats["mean_set_size"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-config", choices=["llama3b"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--forced-k", default="8", help="comma list of forced set sizes to time against beams")
    ap.add_argument("--skip-natural", action="store_true", help="only the forced-k table")
    ap.add_argument("--static", action="store_true",
                    help="also time HF static-cache (compiled) greedy and beam search as the anchors")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    if a.random_config:
        dev = "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
        lm = random_model(a.random_config, dev, "bf16" if a.dtype == "auto" else a.dtype)
    else:
        lm = load_model(None, a.device, a.dtype)
    torch.set_grad_enabled(False)
    print(f"model {lm.name} on {lm.device} ({lm.dtype}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    n = a.steps
    prompts = PROMPTS[:a.prompts]
    results: dict = {"model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype), "steps": n}
    base = dict(max_tokens=n, min_steps=n)  # fixed length: every variant makes n steps
    if a.random_config:
        base["raw_prompt"] = True

    if not a.skip_natural:
        rows = {"greedy": [], "beam": [], "tempo": [], "tempo+pruning": []}
        sizes = []
        for r in range(a.rounds):
            for p in prompts:
                s = build_settings(dict(prompt=p, selection_threshold=0.1, **base))
                _, ids = encode_prompt(lm, s)
                g = greedy_step_ms(lm, ids, n)
                t, k = tempo_step_ms(lm, s)
                tp, _ = tempo_step_ms(lm, s.replace(use_retroactive_pruning=True))
                beams = max(2, round(k))
                b = beam_step_ms(lm, ids, beams, n)
                sizes.append(k)
                for name, v in (("greedy", g), ("beam", b), ("tempo", t), ("tempo+pruning", tp)):
                    rows[name].append(v)
        med = {k: statistics.median(v) for k, v in rows.items()}
        ratio = {k: statistics.median([x / g for x, g in zip(v, rows["greedy"])]) for k, v in rows.items()}
        mean_k = statistics.mean(sizes)
        print(f"\nselection threshold 0.1, {n} steps, {len(prompts)} prompts x {a.rounds} rounds; "
              f"mean TEMPO set size {mean_k:.2f} (beam search uses num_beams = {max(2, round(mean_k))})")
        print(f"{'variant':<16}{'ms/step':>10}{'x greedy':>10}")
        for k in rows:
            print(f"{k:<16}{med[k]:>10.1f}{ratio[k]:>10.2f}")
        results["natural"] = {"median_ms": med, "ratio_vs_greedy": ratio, "mean_set_size": mean_k}

    forced = {}
    anchors = {}  # the fastest HF decoding on this machine, per prompt: static-cache greedy (and beams per k)
    for k in [int(x) for x in a.forced_k.split(",") if x]:
        g_l, t_l, b_l, tp_l, sg_l, sb_l = [], [], [], [], [], []
        for r in range(a.rounds):
            p = prompts[r % len(prompts)]
            s = build_settings(dict(prompt=p, selection_threshold=0.0, max_parallel_tokens=k, **base))
            _, ids = encode_prompt(lm, s)
            if a.static and (p, 1) not in anchors:
                anchors[(p, 1)] = static_step_ms(lm, ids, n)
            if a.static and k > 1 and (p, k) not in anchors:
                anchors[(p, k)] = static_step_ms(lm, ids, n, beams=k)
            sg_l.append(anchors.get((p, 1)))
            sb_l.append(anchors.get((p, k)) if k > 1 else anchors.get((p, 1)))
            g_l.append(greedy_step_ms(lm, ids, n))
            t_l.append(tempo_step_ms(lm, s)[0])
            tp_l.append(tempo_step_ms(lm, s.replace(use_retroactive_pruning=True))[0])
            b_l.append(beam_step_ms(lm, ids, k, n) if k > 1 else g_l[-1])
        forced[k] = {"greedy_ms": statistics.median(g_l), "tempo_ms": statistics.median(t_l),
                     "beam_ms": statistics.median(b_l), "tempo_pruning_ms": statistics.median(tp_l),
                     "pruning_vs_greedy": statistics.median([t / g for t, g in zip(tp_l, g_l)]),
                     "tempo_vs_greedy": statistics.median([t / g for t, g in zip(t_l, g_l)]),
                     "tempo_vs_beam": statistics.median([t / b for t, b in zip(t_l, b_l)])}
        if all(v is not None for v in sg_l):
            forced[k].update(static_greedy_ms=statistics.median(sg_l),
                             tempo_vs_static_greedy=statistics.median([t / g for t, g in zip(t_l, sg_l)]),
                             pruning_vs_static_greedy=statistics.median([t / g for t, g in zip(tp_l, sg_l)]))
        if all(v is not None for v in sb_l):
            forced[k].update(static_beam_ms=statistics.median(sb_l))
    if forced:
        print(f"\nforced set size k (threshold 0, max_parallel_tokens k), {n} steps")
        print(f"{'k':>3}{'greedy ms':>11}{'TEMPO ms':>10}{'+pruning':>10}{'beam ms':>10}{'T/greedy':>10}"
              f"{'T+p/greedy':>12}{'T/beam':>8}")
        for k, v in forced.items():
            print(f"{k:>3}{v['greedy_ms']:>11.1f}{v['tempo_ms']:>10.1f}{v['tempo_pruning_ms']:>10.1f}"
                  f"{v['beam_ms']:>10.1f}{v['tempo_vs_greedy']:>10.2f}{v['pruning_vs_greedy']:>12.2f}"
                  f"{v['tempo_vs_beam']:>8.2f}")
        if a.static:
            print(f"\nanchors: HF generate with cache_implementation='static' (compiled), {n} steps")
            print(f"{'k':>3}{'static greedy':>15}{'static beam':>13}{'T/static':>10}{'T+p/static':>12}")
            for k, v in forced.items():
                cell = lambda key, fmt: format(v[key], fmt) if key in v else "n/a"  # noqa: E731
                print(f"{k:>3}{cell('static_greedy_ms', '15.1f'):>15}{cell('static_beam_ms', '13.1f'):>13}"
                      f"{cell('tempo_vs_static_greedy', '10.2f'):>10}{cell('pruning_vs_static_greedy', '12.2f'):>12}")
        results["forced"] = forced
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
