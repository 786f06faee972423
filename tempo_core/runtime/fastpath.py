"""CPU fp32 speed-ups for TEMPO's few-row forwards. Same math, measured on this 2-core AVX2 machine.

MKL runs `X @ W^T` with 2-16 rows X at 2-3 GEMV passes' cost; the transposed problem `(W @ X^T)^T` runs at
about one (bench/README.md: linear layers of SmolLM2, M=2: 79 -> 41 ms, M=4: 94 -> 47 ms). Each nn.Linear
of the model gets an instance-level forward that takes that path only while a `fast_rows(model)` block is open
(TEMPO's own forwards), and loses it when the block closes: plain transformers calls on the same model
(greedy/beam baselines, `generate`) and a model passed in by a user are untouched.
A 3-row step is padded to 4 rows (M=3 stays slow even transposed): `rows_to_feed`, `pad_set`, `unpad`.
"""

from __future__ import annotations

import contextlib
import threading
import types
import weakref
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

MAX_ROWS = 16


class ScopedSwitch:
    """Patches on a model that exist only while a block on that model is open, with a per-context flag saying
    whether this context is inside one. Blocks nest and may be open on several threads at once (counted per
    model): the first to open installs the patches, the last to close removes them, so a model passed in comes
    out as it went in, and other contexts' forwards meanwhile see `on()` False and take the plain path."""

    def __init__(self, name: str, install: Callable[[Any], None], remove: Callable[[Any], None]):
        self._active: ContextVar[bool] = ContextVar(name, default=False)
        self._install, self._remove = install, remove
        self._lock = threading.Lock()
        self._users: dict[int, int] = {}  # id(model) -> blocks open on it (any thread)

    def on(self) -> bool:
        return self._active.get()

    @contextlib.contextmanager
    def __call__(self, model: Any) -> Iterator[None]:
        with self._lock:
            if self._users.get(id(model), 0) == 0:
                self._install(model)
            self._users[id(model)] = self._users.get(id(model), 0) + 1
        token = self._active.set(True)
        try:
            yield
        finally:
            self._active.reset(token)
            with self._lock:
                self._users[id(model)] -= 1
                if self._users[id(model)] == 0:
                    del self._users[id(model)]
                    self._remove(model)


def _linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if _fast.on() and 1 < rows <= MAX_ROWS:
        y = torch.mm(self.weight, x.reshape(rows, -1).t()).t().contiguous()
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], -1)
    return F.linear(x, self.weight, self.bias)


_found: "weakref.WeakKeyDictionary[Any, list[torch.nn.Linear]]" = weakref.WeakKeyDictionary()


def _linears(model: Any) -> list[torch.nn.Linear]:
    """The layers to switch (found once per model; none off CPU fp32: GPUs and bf16 have no such quirk)."""
    if model not in _found:
        param = next(model.parameters(), None)
        cpu32 = param is not None and param.device.type == "cpu" and param.dtype == torch.float32
        _found[model] = [m for m in model.modules() if type(m) is torch.nn.Linear] if cpu32 else []
    return _found[model]


def _install(model: Any) -> None:
    for m in _linears(model):
        m.forward = types.MethodType(_linear_forward, m)


def _remove(model: Any) -> None:
    for m in _linears(model):
        del m.forward  # the instance attribute goes: nn.Linear.forward again


_fast = ScopedSwitch("tempo_fast_rows", _install, _remove)


def fast_rows(model: Any) -> contextlib.AbstractContextManager[None]:
    """Inside this block (TEMPO's own forwards), `model`'s nn.Linear layers take the transposed path on CPU fp32;
    when the last block on the model closes, their own forward is back, so a model passed in is left as it came.
    Other threads' forwards on the model meanwhile take the plain path (the switch is per context)."""
    return _fast(model)


def rows_to_feed(model: Any, k: int) -> int:
    """Rows to feed for a set of k siblings: 3 become 4 on CPU fp32 (MKL runs 3 rows slower than 4)."""
    return 4 if k == 3 and _linears(model) else k


def pad_set(token_ids: list[int], positions: list[int], mask: torch.Tensor
            ) -> tuple[list[int], list[int], torch.Tensor]:
    """Fill a set up to the mask's rows with copies of its last sibling that no real sibling sees
    (`mask`: [1, 1, rows, kv], built for the padded set)."""
    pad = mask.shape[-2] - len(token_ids)
    if pad:
        mask[..., :len(token_ids), -pad:] = False
    return token_ids + token_ids[-1:] * pad, positions + positions[-1:] * pad, mask


def padded_mask(mask: torch.Tensor, pad: int) -> torch.Tensor:
    """A set's mask [1, 1, k, P + k] grown by `pad` rows and columns: each pad row sees what the last sibling
    sees, and itself (pad_set then hides the pad columns from the real siblings)."""
    *lead, k, cols = mask.shape
    out = torch.zeros(*lead, k + pad, cols + pad, dtype=mask.dtype, device=mask.device)
    out[..., :k, :cols] = mask
    out[..., k:, :cols] = mask[..., k - 1:k, :]
    out[..., k:, cols:] = torch.eye(pad, dtype=mask.dtype, device=mask.device)
    return out


def unpad(logits: torch.Tensor, attention: dict[int, torch.Tensor], k: int
          ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The real siblings' logits, and the attention they paid, without the pad rows and columns."""
    pad = logits.shape[0] - k
    if not pad:
        return logits, attention
    return logits[:k], {layer: a[:k, :-pad] for layer, a in attention.items()}
