"""CPU fp32 speed-ups for TEMPO's few-row forwards. Same math, measured on this 2-core AVX2 machine.

MKL runs `X @ W^T` with 2-16 rows X at 2-3 GEMV passes' cost; the transposed problem `(W @ X^T)^T` runs at
about one (bench/README.md: linear layers of SmolLM2, M=2: 79 -> 41 ms, M=4: 94 -> 47 ms). Each nn.Linear
of the model gets an instance-level forward that takes that path, but only inside `fast_rows()` blocks, so
plain transformers calls on the same model (greedy/beam baselines, `generate`) are untouched.
A 3-row step is padded to 4 rows (M=3 stays slow even transposed); see `ParallelSequence.feed`.
"""

from __future__ import annotations

import contextlib
import types
from contextvars import ContextVar
from typing import Any, Iterator

import torch
import torch.nn.functional as F

_ACTIVE: ContextVar[bool] = ContextVar("tempo_fast_rows", default=False)
MAX_ROWS = 16


def _linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if _ACTIVE.get() and 1 < rows <= MAX_ROWS:
        y = torch.mm(self.weight, x.reshape(rows, -1).t()).t().contiguous()
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], -1)
    return F.linear(x, self.weight, self.bias)


def install_fast_rows(model: Any) -> bool:
    """Install on CPU fp32 models only (GPUs and bf16 have no such quirk). Returns whether installed."""
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        return False
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_linear_forward, module)
    return True


@contextlib.contextmanager
def fast_rows() -> Iterator[None]:
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
