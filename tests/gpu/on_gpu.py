"""What the GPU checks share (tests/gpu: skipped where there is no CUDA GPU, as on CI; on a GPU machine
`python -m pytest -m gpu tests/gpu`)."""

import pytest
import torch
from tiny import tiny_llama

from tempo_core import wrap_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_cuda(seed: int = 0, layers: int = 4, device: str = "cuda", **overrides):
    """A tiny random Llama (tests/tiny.py) moved to `device`, fp32: the GPU kernels, exact enough to compare
    decisions."""
    lm = tiny_llama(seed=seed, layers=layers, **overrides)
    return wrap_model(lm.model.to(device), lm.tokenizer, name=f"tiny-{device}")


def same_decisions(a, b) -> bool:
    """Every step's candidates and pruning decisions."""
    return ([[(c.token_id, c.pruned_at) for c in st.candidates] for st in a.steps]
            == [[(c.token_id, c.pruned_at) for c in st.candidates] for st in b.steps])


def max_prob_gap(a, b) -> float:
    return max((abs(x.prob - y.prob) for p, q in zip(a.steps, b.steps) for x, y in zip(p.candidates, q.candidates)),
               default=0.0)
