"""GPU: fused kernels for the small elementwise ops of a Llama forward (RMSNorm, rotary, SiLU x up). Same math.

A CUDA-graphed step has no launch overhead left, but each small kernel still costs the GPU a few microseconds,
and a Llama layer runs ~40 of them: RMSNorm alone is 6, rotary ~10. torch.compile'd versions run each as one
or two (what that saves a graphed step: bench/README.md, "Where the time went"). They are compiled once per process
on first use (shapes are dynamic, so prompts of any length reuse them). Called eagerly they are slower than the
plain ones (dynamo checks its guards on every call), so they are for what is captured once and replayed: graphs.py
captures inside a block; eager forwards stay plain.

Like fastpath.fast_rows, the switch is scoped: the model's RMSNorm and MLP modules get instance forwards, and the
modeling module's `apply_rotary_pos_emb` a wrapper, only while a `fused_kernels(model)` block is open; other
contexts' forwards meanwhile take the plain path, and the last block to close removes them. Only for CUDA Llama
models with SiLU MLPs (the product's models); elsewhere the block does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import types
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .fastpath import ScopedSwitch

log = logging.getLogger(__name__)

_failed: list[str] = []  # set once if compiling fails (no triton, say): the plain path from then on


def _rms_norm_math(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotary_math(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def _silu_mul_math(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _compiled(math: Callable) -> Callable:
    """`math` compiled on its first call (importing dynamo alone costs ~1.4 s, which CPU runs never need)."""
    fn = None

    def call(*args: Any) -> Any:
        nonlocal fn
        if fn is None:
            fn = torch.compile(math, dynamic=True, fullgraph=True)
        return fn(*args)
    return call


_rms_norm = _compiled(_rms_norm_math)
_rotary = _compiled(_rotary_math)
_silu_mul = _compiled(_silu_mul_math)


def _fused(compiled: Callable, plain: Callable, *args: Any) -> Any:
    """The compiled kernel inside a block, the plain one outside (or once compiling has failed)."""
    if _switch.on() and not _failed:
        try:
            return compiled(*args)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot compile: same math, unfused
            _failed.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
            log.warning("fused kernels unavailable, using the plain ones: %s", _failed[0])
    return plain(*args)


def _norm_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _fused(_rms_norm, lambda x, *_: type(self).forward(self, x), x, self.weight, self.variance_epsilon)


def _mlp_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not _switch.on() or _failed:
        return type(self).forward(self, x)
    return self.down_proj(_fused(_silu_mul, _silu_mul_math, self.gate_proj(x), self.up_proj(x)))


def _rotary_wrapper(original: Callable) -> Callable:
    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return _fused(_rotary, original, q, k, cos, sin, unsqueeze_dim)
    return apply_rotary_pos_emb


def fusable(model: Any) -> bool:
    """A Llama with SiLU MLPs on one CUDA device."""
    cfg = model.config
    param = next(model.parameters(), None)
    devices = set((getattr(model, "hf_device_map", None) or {}).values())
    return (param is not None and param.device.type == "cuda" and len(devices) <= 1
            and cfg.model_type == "llama" and getattr(cfg, "hidden_act", "silu") == "silu")


_rotary_users: dict[str, tuple[int, Callable]] = {}  # modeling module -> (models in blocks, its own function)


def _patched(model: Any) -> list[tuple[torch.nn.Module, Callable]]:
    return [(m, _norm_forward) for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"] + \
           [(m, _mlp_forward) for m in model.modules() if type(m).__name__ == "LlamaMLP"]


def _install(model: Any) -> None:
    for m, forward in _patched(model):
        m.forward = types.MethodType(forward, m)
    name = type(model).__module__
    users, original = _rotary_users.get(name, (0, None))
    if users == 0:
        module = sys.modules[name]
        original = module.apply_rotary_pos_emb
        module.apply_rotary_pos_emb = _rotary_wrapper(original)
    _rotary_users[name] = (users + 1, original)


def _remove(model: Any) -> None:
    for m, _ in _patched(model):
        del m.forward  # the instance attribute goes: the class's forward again
    name = type(model).__module__
    users, original = _rotary_users[name]
    if users == 1:
        sys.modules[name].apply_rotary_pos_emb = original
        del _rotary_users[name]
    else:
        _rotary_users[name] = (users - 1, original)


_switch = ScopedSwitch("tempo_fused", _install, _remove)


@contextlib.contextmanager
def fused_kernels(model: Any, enabled: bool = True) -> Iterator[None]:
    """Inside this block `model`'s forwards (in this context) run fused kernels, if `enabled` and `fusable`."""
    if not enabled or not fusable(model):
        yield
        return
    with _switch(model):
        yield
