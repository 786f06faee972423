"""Pruning-threshold schedules: a pure function of the step index (no state, so no drift)."""

from __future__ import annotations

from .config import TempoSettings


def bezier(t: float, p1: float, p2: float) -> float:
    """Cubic Bezier with control values (0, p1, p2, 1) at parameter t in [0, 1]."""
    u = 1.0 - t
    return 3 * u * u * t * p1 + 3 * u * t * t * p2 + t ** 3


def relu_ramp(t: float, activation_point: float) -> float:
    """0 until `activation_point`, then a straight ramp to 1 at t = 1."""
    return max(0.0, t - activation_point) / (1.0 - activation_point)


def progress(step: int, max_steps: int) -> float:
    return min(1.0, step / max(1, max_steps - 1))


def pruning_threshold(step: int, s: TempoSettings) -> float:
    """The attention threshold in force at logical `step`."""
    if not s.dynamic_threshold:
        return s.attention_threshold
    if s.dynamic_threshold_form == "seed_scaled":  # the seeds' compute_dynamic_threshold: base x curve(step / total)
        t = min(1.0, step / s.max_tokens)
        return s.attention_threshold * _shape(t, s)
    t = progress(step, s.max_tokens)
    return s.attention_threshold + (s.final_threshold - s.attention_threshold) * _shape(t, s)


def _shape(t: float, s: TempoSettings) -> float:
    return relu_ramp(t, s.relu_activation_point) if s.use_relu else bezier(t, s.bezier_p1, s.bezier_p2)


def threshold_curve(s: TempoSettings) -> list[float]:
    """The whole schedule, one value per logical step (for plots)."""
    return [pruning_threshold(i, s) for i in range(s.max_tokens)]
