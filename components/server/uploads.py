"""Traces visitors upload: read only from Gradio's upload folder, fully checked against this server's limits."""

from __future__ import annotations

import json
import os
from typing import Any

from tempo_core.config import SettingsError, build_settings
from tempo_core.trace import Trace
from tempo_core.trace_check import check_trace_data

MAX_UPLOAD_BYTES = 8_000_000
UNREADABLE = "not a TEMPO trace: the upload could not be read"


def long_ints_as_floats(digits: str) -> int | float:
    """json.loads' parse_int for client JSON: an integer too long for int() (Python refuses over 4,300 digits with
    a message naming no field) reads as a float (inf), which the field's own check then refuses by name."""
    return int(digits) if len(digits) <= 400 else float(digits)


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
            data = json.loads(f.read().decode("utf-8"), parse_int=long_ints_as_floats)
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
