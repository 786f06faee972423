"""On a GPU: isolated siblings get the logits they would get alone (random Llama-3B-shaped, 4 layers, bf16)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import random_model  # noqa: E402
from tempo_core import build_settings  # noqa: E402
from tempo_core.sequence import ParallelSequence  # noqa: E402

lm = random_model("llama3b", "cuda", "bf16")
prompt = list(range(5, 60))
seq = ParallelSequence(lm, build_settings(dict(prompt="x", raw_prompt=True)), prompt)
sibs = seq.prefill().topk(4).indices.tolist()
_, logits, _ = seq.feed(sibs, len(prompt))
worst = 0.0
with torch.inference_mode():
    for tok, got in zip(sibs, logits):
        ref = lm.model(torch.tensor([prompt + [tok]], device="cuda")).logits[0, -1]
        worst = max(worst, float((got.float() - ref.float()).abs().max()))
scale = float(logits.float().abs().max())
print(f"max |siblings - alone| = {worst:.4f} (logit scale {scale:.2f}); argmax equal:",
      all(int(g.argmax()) == int(lm.model(torch.tensor([prompt + [t]], device='cuda')).logits[0, -1].argmax())
          for t, g in zip(sibs, logits)))
