"""The HTML report: every trace string escaped."""

from __future__ import annotations

import pytest
from tiny import tiny_llama

from components.figures.report import report_html
from tempo_core import build_settings, run


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3)


EVIL = "</script><script>alert('x')</script><img src=x onerror=alert(1)>"


def test_the_report_escapes_every_trace_string(lm):
    trace = run(lm, build_settings({"prompt": EVIL, "max_tokens": 3}))
    trace.mode, trace.stop_reason, trace.model = EVIL, EVIL, EVIL
    trace.steps[0].candidates[0].text = EVIL
    page = report_html(trace)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;/script&gt;" in page
