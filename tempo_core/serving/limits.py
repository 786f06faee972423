"""What one request may cost on a shared server, checked before a run and enforced during it.

Before: `estimate_cost` turns settings and the prompt's length into forward passes and tokens fed (an upper
bound: every step is assumed to keep `max_parallel_tokens` candidates), and `check_budget` refuses a request
whose estimate exceeds the server's `Limits`, naming the setting that makes it big.
During: the run's `RunStop` (stop.py) trips at the server's time limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..analysis.faithfulness import PATHS_PER_FORWARD
from ..config import SettingsError, TempoSettings



# TEMPO_DEMO=1 lowers these caps (explicit TEMPO_APP_* variables still win)
DEMO_CAPS = {"max_tokens": 48, "max_parallel_tokens": 6, "mcts_simulations": 20, "mcts_depth": 8,
             "faithfulness_paths": 8, "max_seconds": 60.0}


class Caps(dict):
    """Upper bounds of settings by name; `where` is how an error names whose bounds they are."""

    def __init__(self, bounds: Mapping[str, float], where: str):
        super().__init__(bounds)
        self.where = where


@dataclass(frozen=True)
class Limits:
    """A server's per-request limits (environment: TEMPO_APP_*)."""
    max_tokens: int = 200
    max_parallel_tokens: int = 16
    mcts_simulations: int = 50
    mcts_depth: int = 16
    faithfulness_paths: int = 32
    max_forward_passes: int = 4_000
    max_tokens_fed: int = 400_000
    max_seconds: float = 120.0
    max_waiting: int = 32  # API requests waiting for the model; more get a 503
    max_per_address: int = 4  # API requests one client address has waiting or running; more get a 429
    demo: bool = False  # TEMPO_DEMO=1: a classroom server (Learn tab first, expert settings hidden, lower caps)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Limits":
        env = os.environ if environ is None else environ
        names = {"max_tokens": "TEMPO_APP_MAX_TOKENS", "max_parallel_tokens": "TEMPO_APP_MAX_PARALLEL",
                 "mcts_simulations": "TEMPO_APP_MAX_MCTS_SIMULATIONS", "mcts_depth": "TEMPO_APP_MAX_MCTS_DEPTH",
                 "faithfulness_paths": "TEMPO_APP_MAX_FAITHFULNESS_PATHS",
                 "max_forward_passes": "TEMPO_APP_MAX_FORWARD_PASSES", "max_tokens_fed": "TEMPO_APP_MAX_TOKENS_FED",
                 "max_seconds": "TEMPO_APP_MAX_SECONDS", "max_waiting": "TEMPO_API_MAX_WAITING",
                 "max_per_address": "TEMPO_API_PER_ADDRESS"}
        demo = env.get("TEMPO_DEMO", "0").strip().lower() in ("1", "true", "yes")
        values: dict = dict(DEMO_CAPS, demo=True) if demo else {}
        for field_name, var in names.items():
            if var in env:
                try:
                    value = float(env[var])
                    if not value > 0:
                        raise ValueError
                except ValueError:
                    raise SettingsError(var, f"must be a positive number, got {env[var]!r}") from None
                values[field_name] = value if field_name == "max_seconds" else int(value)
        return cls(**values)

    @property
    def caps(self) -> Caps:
        """Upper bounds of settings (for `build_settings(caps=...)`, whose errors then state them)."""
        where = "on this classroom server (a demo limit, TEMPO_DEMO)" if self.demo else "on this server"
        return Caps({"max_tokens": self.max_tokens, "min_steps": self.max_tokens,
                     "max_parallel_tokens": self.max_parallel_tokens, "mcts_simulations": self.mcts_simulations,
                     "mcts_depth": self.mcts_depth, "faithfulness_paths": self.faithfulness_paths}, where)

    def fit(self, s: TempoSettings) -> TempoSettings:
        """`s` with every capped setting lowered to this server's cap (recorded runs, lessons and examples were
        made with the full caps; a classroom server runs them within its own)."""
        caps = self.caps
        lowered = {k: min(getattr(s, k), int(v)) for k, v in caps.items() if getattr(s, k) > v}
        if "max_tokens" in lowered and s.min_steps > lowered["max_tokens"]:
            lowered["min_steps"] = lowered["max_tokens"]
        return s.replace(**lowered) if lowered else s


@dataclass(frozen=True)
class Cost:
    forward_passes: int
    tokens_fed: int
    driver: str  # the setting that makes the request big
    formula: str  # how the estimate came about, for the error message


def estimate_cost(s: TempoSettings, prompt_tokens: int) -> Cost:
    """Upper bound of the work a run of `s` does on a prompt of `prompt_tokens` tokens."""
    p, t, k = prompt_tokens, s.max_tokens, s.max_parallel_tokens
    if s.mode == "default":
        return Cost(t + 1, p + t, "max_tokens", f"max_tokens {t}")
    if s.mode == "mcts":
        sims, depth = s.mcts_simulations, s.mcts_depth
        return Cost(1 + t * (sims + 1), p + t * (sims * depth + 1), "mcts_simulations",
                    f"max_tokens {t} x (mcts_simulations {sims} + 1)")
    if s.mode == "soft":  # one concept row per step
        cost = Cost(t + 1, p + t, "max_tokens", f"max_tokens {t} + prompt {p}")
    elif s.disable_kv_cache:  # every step re-feeds the whole sequence
        passes, fed = t + 1, t * p + k * t * (t + 1) // 2
        cost = Cost(passes, fed, "disable_kv_cache",
                    f"disable_kv_cache re-feeds prompt ({p}) + rows each step, max_tokens {t} times")
    else:
        cost = Cost(t + 1, p + t * k, "max_tokens", f"max_tokens {t} x max_parallel_tokens {k} + prompt {p}")
    if s.faithfulness:  # replay + one batch of explicit paths per step + perplexities + greedy
        paths = s.faithfulness_paths
        batches = -(-paths // PATHS_PER_FORWARD)
        fed = cost.tokens_fed + (p + t * k) + paths * (t * p + t * (t + 1) // 2) + 2 * (p + t) + p + t
        cost = Cost(cost.forward_passes + t * (batches + 2) + 3, fed, "faithfulness_paths",
                    f"faithfulness runs up to faithfulness_paths {paths} explicit paths at each of max_tokens {t} "
                    f"steps on a prompt of {p} tokens")
    if s.commitment:  # one replay with every layer's states, then lm_head over each set row at every layer
        # (on the embedded model a row's lens at all 30 layers costs about as much as 6 tokens through the model)
        rows = p + t * k
        cost = Cost(cost.forward_passes + 1, cost.tokens_fed + rows + t * k * 6, cost.driver, cost.formula)
    return cost


def check_budget(s: TempoSettings, prompt_tokens: int, limits: Limits, runs: int = 1) -> Cost:
    """Refuse (SettingsError naming the driving setting) a request whose estimated cost exceeds `limits`.
    `runs` multiplies the cost (a sweep runs once per threshold)."""
    c = estimate_cost(s, prompt_tokens)
    passes, fed = c.forward_passes * runs, c.tokens_fed * runs
    times = f" x {runs} runs" if runs > 1 else ""
    if passes > limits.max_forward_passes:
        raise SettingsError(c.driver, f"this request needs up to {passes:,} forward passes ({c.formula}{times}); "
                                      f"this server allows {limits.max_forward_passes:,} per request")
    if fed > limits.max_tokens_fed:
        driver = "prompt" if c.driver == "max_tokens" and prompt_tokens > limits.max_tokens_fed // 2 else c.driver
        raise SettingsError(driver, f"this request feeds up to {fed:,} tokens through the model ({c.formula}{times}); "
                                    f"this server allows {limits.max_tokens_fed:,} per request")
    return c
