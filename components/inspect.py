"""Pure helpers over a trace: the tree as it was at a step, node details, node choices."""

from __future__ import annotations

import html
import json
import os
from typing import Any

from tempo_core.config import SettingsError, build_settings
from tempo_core.trace import Candidate, Trace, check_trace_data

from .views import show_token
from tempo_core.trace import rewind as trace_at  # noqa: F401 - the tree as it stood at a step

MAX_UPLOAD_BYTES = 8_000_000


def find_node(trace: Trace, node: str) -> tuple[int, int, Candidate] | None:
    """Validate a 'step:index' id coming back from the browser."""
    try:
        s, i = (int(x) for x in str(node).split(":"))
        if s < 0 or i < 0:
            return None
        return s, i, trace.steps[s].candidates[i]
    except (ValueError, IndexError):
        return None


def node_choices(trace: Trace) -> list[tuple[str, str]]:
    return [(f"step {st.step} · {c.text!r} · p={c.prob:.3f}{' · pruned' if c.pruned_at is not None else ''}",
             f"{st.step}:{i}") for st in trace.steps for i, c in enumerate(st.candidates)]


def node_details(trace: Trace, node: str) -> str:
    found = find_node(trace, node)
    if found is None:
        return "Select a candidate (click a token in the text or a node in the tree, or pick one from the list)."
    s, i, c = found
    st = trace.steps[s]
    if c.pruned_at is not None:
        fate = "not chosen by the search" if trace.mode == "mcts" else f"**pruned** after step {c.pruned_at}"
    else:
        fate = "kept (its whole set failed; `keep_unattended`)" if c.unattended else "alive"
    lines = [f"### `{html.escape(show_token(c.shown))}` — token id {c.token_id}",
             f"- logical step **{s}**, shared position id **{st.position}**, physical row {c.row}",
             f"- probability **{c.prob:.4f}** (rank {i + 1} of {len(st.candidates)} in its set)",
             f"- selection threshold {st.selection_threshold:.3f}" + (
                 f", pruning threshold in force {st.pruning_threshold:.4f}" if st.pruning_threshold is not None else ""),
             f"- fate: {fate}"]
    if c.attention is not None:
        per = ", ".join(f"step {k}: {v:.4f}" for k, v in sorted(c.attention_by_step.items()))
        lines.append(f"- attention received (mean) **{c.attention:.4f}** — {per}")
    if c.visits is not None:
        lines.append(f"- MCTS: {c.visits} visits, mean value {c.value:.3f}")
    if st.alternatives:
        alts = ", ".join(f"`{html.escape(show_token(a['text']))}` {a['prob']:.4f}" for a in st.alternatives)
        lines.append(f"- top alternatives not chosen: {alts}")
    return "\n".join(lines)


UNREADABLE = "not a TEMPO trace: the upload could not be read"


def uploaded_path(file: Any, upload_dir: str) -> str:
    """The real path of a file Gradio received, or ValueError(UNREADABLE). The path comes from the client (the
    queue protocol lets it name any path), so only a regular file inside Gradio's upload folder is read: anything
    else (elsewhere, missing, a directory, a link out) gets the same message, which tells nothing about it."""
    path = file if isinstance(file, str) else getattr(file, "path", None) or getattr(file, "name", None)
    if not isinstance(path, str) or not path:
        raise ValueError(UNREADABLE)
    real, root = os.path.realpath(path), os.path.realpath(upload_dir)
    if os.path.commonpath([real, root]) != root or real == root or not os.path.isfile(real):
        raise ValueError(UNREADABLE)
    return real


def read_upload(file: Any, max_steps: int, max_candidates: int) -> Trace:
    """A trace uploaded to this server's page (only from Gradio's upload folder: `uploaded_path`)."""
    from gradio.utils import get_upload_folder
    return read_trace_file(uploaded_path(file, get_upload_folder()), max_steps, max_candidates)


def read_trace_file(file: Any, max_steps: int, max_candidates: int, max_bytes: int = MAX_UPLOAD_BYTES) -> Trace:
    """A JSON trace file (a path or file object), fully checked against this server's limits. ValueError says
    what is wrong, naming the field. The page reads uploads through `read_upload`."""
    path = file if isinstance(file, str) else getattr(file, "name", None) or getattr(file, "path", "")
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ValueError(f"the file is {size / 1e6:.1f} MB; this server reads traces up to {max_bytes / 1e6:.0f} MB")
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
        check_trace_data(data, max_steps, max_candidates)
        build_settings(data["settings"])
        return Trace.from_dict(data)
    except OSError:
        raise ValueError(UNREADABLE) from None
    except UnicodeDecodeError:
        raise ValueError("not a TEMPO trace: the file is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a TEMPO trace: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise ValueError("not a TEMPO trace: JSON nested too deeply") from None
    except SettingsError as exc:
        raise ValueError(f"not a TEMPO trace: settings.{exc}") from None
    except ValueError as exc:  # TraceError and the size check
        message = str(exc)
        raise ValueError(message if message.startswith("not a TEMPO trace") else f"not a TEMPO trace: {message}") from None
