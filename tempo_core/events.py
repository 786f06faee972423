"""What every decoding mode shares: the event a step yields, and the start of a trace (the prompt as fed).

Below the modes (engine, baseline, mcts) so that imports only run downward; `modes.py` dispatches above them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import SettingsError, TempoSettings, validate_prompt
from .model import LoadedModel
from .trace import Candidate, Step, Trace


THINKING_SYSTEM_PROMPT = "Enable deep thinking subroutine."


@dataclass
class StepEvent:
    """What a caller (CLI progress bar, UI) sees after each logical step. `trace` is the live trace."""
    index: int  # the step just made (-1 when none was)
    trace: Trace
    pruned: list[Candidate]  # candidates pruned by this step's attention
    done: bool = False  # the last event of a run: trace.stop_reason and timings are final
    progress: str | None = None  # set on events of a phase after the steps (no new step): what is being done

    @property
    def step(self) -> Step:
        return self.trace.steps[self.index]


def encode_prompt(lm: LoadedModel, s: TempoSettings) -> tuple[str, list[int]]:
    """Chat template for instruct models (unless `raw_prompt`); thinking adds Cogito's system prompt."""
    tok = lm.tokenizer
    if s.enable_thinking and (s.raw_prompt or not lm.has_chat_template):
        raise SettingsError("enable_thinking", "needs the chat template (a model that has one, without raw_prompt)")
    if s.raw_prompt or not lm.has_chat_template:
        ids = tok(s.prompt, add_special_tokens=True)["input_ids"]
        return s.prompt, list(ids)
    messages = [{"role": "user", "content": s.prompt}]
    if s.enable_thinking:
        messages.insert(0, {"role": "system", "content": THINKING_SYSTEM_PROMPT})
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text, list(tok(text, add_special_tokens=False)["input_ids"])


def check_context(lm: LoadedModel, s: TempoSettings, prompt_tokens: int) -> None:
    """The prompt and max_tokens steps must fit the model's context (positions past it are undefined)."""
    max_ctx = getattr(lm.model.config, "max_position_embeddings", None)
    if not max_ctx:
        return
    if prompt_tokens >= max_ctx:
        raise SettingsError("prompt", f"is {prompt_tokens:,} tokens as fed to the model (chat template included); "
                                      f"the model's context is {max_ctx:,} tokens, so the prompt must be under "
                                      f"{max_ctx:,} tokens with room for max_tokens")
    if prompt_tokens + s.max_tokens > max_ctx:
        raise SettingsError("max_tokens", f"prompt ({prompt_tokens:,} tokens) + max_tokens ({s.max_tokens}) must fit "
                                          f"the model's context of {max_ctx:,} tokens; use max_tokens <= "
                                          f"{max_ctx - prompt_tokens}")


def new_trace(lm: LoadedModel, s: TempoSettings) -> Trace:
    validate_prompt(s)
    prompt_text, ids = encode_prompt(lm, s)
    check_context(lm, s, len(ids))
    return Trace(model=lm.name, mode=s.mode, settings=s.to_dict(), prompt=s.prompt, prompt_text=prompt_text,
                 prompt_token_ids=ids)
