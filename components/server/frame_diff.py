"""The diff Gradio sends for each streamed frame, with its nested-delete bug fixed.

Gradio (6.x, `gradio.utils.diff`) sends a streaming output as edits against the previous frame. When a list
shrinks by several items, its "delete" edits are shifted so that they can be applied one after another; but every
enclosing list shifts them again, so a figure whose trace lists shrink (the tree collapsing a stretch of steps)
arrives corrupted: the browser drops the wrong points and `gradio_client` fails with "list assignment index out
of range". `diff` here shifts only a list's own deletes, and `install()` puts it in Gradio's place.
"""

from __future__ import annotations

from typing import Any

import gradio.utils


def diff(old: Any, new: Any, path: list | None = None) -> list[list]:
    """Edits that turn `old` into `new`, in Gradio's format: ["replace" | "append" | "add" | "delete", path, value];
    a list's deletes come last, each index as it is once the previous deletes were applied."""
    path = [] if path is None else path
    if old == new:
        return []
    if type(old) is not type(new):
        return [["replace", path, new]]
    if isinstance(old, str) and new.startswith(old):
        return [["append", path, new[len(old):]]]
    if isinstance(old, list):
        common = min(len(old), len(new))
        edits = [e for i in range(common) for e in diff(old[i], new[i], path + [i])]
        edits += [["delete", path + [common], None] for _ in range(common, len(old))]  # each removes index `common`
        edits += [["add", path + [i], new[i]] for i in range(common, len(new))]
        return edits
    if isinstance(old, dict):
        edits = [e for k in old if k in new for e in diff(old[k], new[k], path + [k])]
        edits += [["delete", path + [k], None] for k in old if k not in new]
        edits += [["add", path + [k], new[k]] for k in new if k not in old]
        return edits
    return [["replace", path, new]]


def install() -> None:
    """Use this `diff` for every streamed output of this process (Gradio looks it up on each frame)."""
    gradio.utils.diff = diff
