"""A real browser (Debian's headless Chromium through Playwright) drives the app on the embedded model."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_gradio_client import steps_made

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "tests" / "artifacts"
# Waits are for conditions; these are only how long a condition may take on a machine loaded by other work before
# the test gives up (a view is drawn in well under a second on a quiet one, a 200-step run in about a minute)
VIEW_MS = 120_000
RUN_MS = 900_000

if CHROMIUM is None:
    print("\n*** SKIPPING the browser test: no chromium on PATH (make test installs Debian's chromium as root) ***\n",
          file=sys.stderr)
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    yield from _serve({})


@pytest.fixture(scope="module")
def demo_url():
    """A classroom server (TEMPO_DEMO=1: the Learn tab first, lower caps, expert settings behind one switch)."""
    yield from _serve({"TEMPO_DEMO": "1"})


def _serve(extra_env: dict):
    port = free_port()
    # a time limit no run of these tests reaches however busy the machine (a 200-step run at 1 step/s took 200 s)
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "TEMPO_APP_MAX_SECONDS": "3600", **extra_env}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240  # the first start converts the bundled GGUF (~40 s)
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app exited: {proc.stdout.read()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("app did not answer /health in time")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_generate_in_a_real_browser(app_url, engine, chromium):
    from playwright.sync_api import expect
    page = chromium.page()
    page.goto(app_url + "/?max_tokens=24&use_retroactive_pruning=true&attention_threshold=0.02&faithfulness=true",
              wait_until="load")
    expect(page.locator("#generate")).to_be_visible(timeout=VIEW_MS)
    # the link's settings filled the form
    expect(page.locator("input[aria-label='number input for Max tokens']")).to_have_value("24", timeout=VIEW_MS)
    # a typed value outside a slider's range is never changed silently
    thr_box = page.locator("input[aria-label='number input for Selection threshold']")
    thr_box.fill("-1")
    thr_box.press("Tab")
    expect(page.locator(".tempo-range-note")).to_contain_text(
        "Selection threshold: -1 is outside [0, 1]; set to 0", timeout=VIEW_MS)
    thr_box.fill("0.1")
    thr_box.press("Tab")
    expect(page.locator(".tempo-range-note")).to_have_count(0)
    page.locator("#prompt textarea").fill("What is the capital of France?")
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("Generating", timeout=VIEW_MS)
    expect(page.locator("#status")).to_contain_text("Done", timeout=RUN_MS)
    points = page.locator("#tempo-tree .scatterlayer .trace .points path")
    expect(points.first).to_be_visible(timeout=VIEW_MS)
    status = page.locator("#status").inner_text()
    steps = _steps(status)
    assert points.count() >= steps  # at least one node per logical step (plus the siblings)
    tokens = page.locator("#tempo-text .tok")
    assert tokens.count() >= steps
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "app.png"))
    # clicking a node of the Plotly tree opens its details (plotly_click -> trigger -> Python)
    page.locator("#tempo-tree").scroll_into_view_if_needed()
    box = points.nth(min(3, points.count() - 1)).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(page.get_by_text("token id").first).to_be_visible(timeout=VIEW_MS)
    tokens.first.click()  # clicking a token in the text opens that candidate: step 0, the most probable
    expect(page.get_by_text("logical step 0,").first).to_be_visible(timeout=VIEW_MS)
    page.get_by_role("tab", name="Pruning heatmap").click()
    expect(page.locator("#tempo-heatmap .js-plotly-plot")).to_be_visible(timeout=VIEW_MS)
    page.screenshot(path=str(ARTIFACTS / "heatmap.png"))
    page.get_by_role("tab", name="Research").click()
    expect(page.locator("#faith-plot")).to_contain_text("mean KL", timeout=VIEW_MS)
    expect(page.locator("#threads-plot")).to_contain_text("Single-threadedness", timeout=VIEW_MS)
    page.locator("#threads-plot").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "threads.png"))
    threads = next(t for t in _plot(page, "#threads-plot") if t["name"] == "step")
    page.evaluate("window.scrollTo(0, 0)")
    page.get_by_role("tab", name="Positions & mask").click()
    expect(page.locator("#mask-plot")).to_contain_text("siblings share position", timeout=VIEW_MS)
    page.screenshot(path=str(ARTIFACTS / "research.png"))
    # replay without the model, download the trace, upload it back
    page.get_by_role("tab", name="Replay & export").click()
    # after_run (which sets the slider's range) has finished once the download button shows
    expect(page.get_by_text("Download JSON trace")).to_be_visible(timeout=VIEW_MS)
    step_box = page.locator("input[aria-label='number input for Replay: step (no model needed)']")
    step_box.fill("2")
    step_box.press("Enter")
    expect(page.locator("#status")).to_contain_text("Replay: at step 2 (steps 0–", timeout=VIEW_MS)
    with page.expect_download() as download:
        page.get_by_text("Download JSON trace").click()
    saved = ARTIFACTS / "downloaded-trace.json"
    download.value.save_as(saved)
    assert json.loads(saved.read_text())["steps"]
    with page.expect_download() as report:  # built on demand from memory; nothing on the server's disk
        page.get_by_text("Download HTML report").click()
    assert "<h1>TEMPO run</h1>" in Path(report.value.path()).read_text()
    page.screenshot(path=str(ARTIFACTS / "export.png"))
    page.locator("#prompt textarea").fill("something else entirely")
    page.locator("#trace-upload input[type=file]").set_input_files(str(saved))
    expect(page.locator("#status")).to_contain_text("Loaded trace", timeout=VIEW_MS)
    # the upload refills the form with the trace's settings
    expect(page.locator("#prompt textarea")).to_have_value("What is the capital of France?", timeout=VIEW_MS)

    # what the page showed is the engine's trace for the same settings: the download, the tree's labels
    from components.figures.style import show_token
    from tempo_core import Trace, build_settings, run
    shown = json.loads(saved.read_text())
    made = run(engine, build_settings(shown["settings"]))
    assert [[(c["token_id"], c["pruned_at"]) for c in st["candidates"]] for st in shown["steps"]] == \
           [[(c.token_id, c.pruned_at) for c in st.candidates] for st in made.steps]
    assert [c["prob"] for st in shown["steps"] for c in st["candidates"]] == \
           pytest.approx([c.prob for st in made.steps for c in st.candidates], abs=1e-5)
    assert [st["step"] for st in shown["steps"]] == list(range(len(made.steps)))
    # the single-threadedness figure plotted the trace's own fitted w against each step's share
    fitted = [x for x in shown["faithfulness"]["steps"] if x["w"] is not None]
    assert threads["x"] == [x["top_share"] for x in fitted] and threads["y"] == [x["w"] for x in fitted]
    page.get_by_role("tab", name="Tree").click()
    labels = next(t for t in _plot(page, "#tempo-tree") if t["name"] == "candidate labels")
    trace = Trace.from_dict(shown)
    for node, label in zip(labels["customdata"], labels["text"]):
        s, i = (int(x) for x in node.split(":"))
        assert label == show_token(trace.steps[s].candidates[i].shown)[:8], (node, label)
    assert len(labels["text"]) >= len(trace.steps) // 2  # labels are really drawn
    drawn = page.locator("#tempo-tree .textpoint").all_text_contents()  # SVG: no innerText
    assert set(labels["text"]) <= set(drawn), set(labels["text"]) - set(drawn)

    # the share link gives back every setting on a fresh page
    page.get_by_role("tab", name="Replay & export").click()
    link = page.locator("#share-link textarea, #share-link input").first.input_value()
    assert link.startswith(app_url) and "faithfulness=true" in link
    fresh = chromium.page()
    fresh.goto(link, wait_until="load")
    expect(fresh.locator("input[aria-label='number input for Max tokens']")).to_have_value("24", timeout=VIEW_MS)
    fresh.wait_for_timeout(1000)
    _open_settings(page)
    _open_settings(fresh)
    here, there = _form(page), _form(fresh)
    settings_inputs = [k for k in here if k.startswith("number input for") and not any(
        w in k for w in ("Replay", "Play speed", "number input for Step"))]
    assert len(settings_inputs) >= 15
    assert {k: there.get(k) for k in settings_inputs} == {k: here[k] for k in settings_inputs}
    for box in ("Prune by later attention", "Measure faithfulness after the run (Research tab)"):
        assert there[box] == here[box] is True, box


def test_soft_thinking_the_commitment_strip_and_the_study_in_a_real_browser(app_url, engine, chromium):
    """Issue 17's views: the commitment strip under the tree draws the run's own lens record and outlines a
    clicked step; a Soft Thinking run of the same prompt sits beside TEMPO's in Compare with both meters' numbers;
    the Study view shows the bundled results. At 1280x800 and on a phone."""
    from playwright.sync_api import expect
    from components.tabs.research import bundled_study
    from tempo_core.analysis.report import study_table
    for phone in (False, True):
        page = chromium.page(phone=phone)
        page.goto(app_url + "/?max_tokens=10&commitment=true&faithfulness=true&selection_threshold=0.1",
                  wait_until="load")
        expect(page.locator("#generate")).to_be_visible(timeout=VIEW_MS)
        page.locator("#prompt textarea").fill("What is the capital of France?")
        page.locator("#generate").click()
        expect(page.locator("#status")).to_contain_text("Done", timeout=RUN_MS)
        strip = page.locator("#commitment-strip")
        expect(strip).to_contain_text("Commitment strip (top-1 and stays): predictions settle at", timeout=VIEW_MS)
        tempo = _download_trace(page, f"commitment-trace{'-phone' if phone else ''}.json")
        _open_tab(page, "Tree")
        drawn = _plot(page, "#commitment-strip")
        heat = next(t for t in drawn if t["type"] == "heatmap")
        steps = tempo["commitment"]["steps"]
        assert heat["x"] == [x["step"] for x in steps]
        assert heat["z"][0] == [x["p_final"][0] for x in steps] and heat["z"][-1] == [x["p_final"][-1] for x in steps]
        marks = {t["name"]: t for t in drawn if t["type"] == "scatter"}
        late = [(x["step"], x["commit_layer"]) for x in steps if x["commit_layer"] == tempo["commitment"]["layers"]]
        assert list(zip(marks["settles only at the output"]["x"], marks["settles only at the output"]["y"])) == late
        # a click on a node outlines its step in the strip
        page.locator("#tempo-text .tok").nth(2).click()
        expect(page.locator("#node-details")).to_contain_text("logical step", timeout=VIEW_MS)
        shown_step = int(page.locator("#node-details").inner_text().split("logical step")[1].split(",")[0].strip())
        page.wait_for_function("() => { const el = document.querySelector('#commitment-strip .js-plotly-plot');"
                               " return el && el.layout && (el.layout.shapes || []).length === 1; }", timeout=VIEW_MS)
        assert page.evaluate(PLOT_SHAPES, "#commitment-strip") == [[shown_step - 0.5, shown_step + 0.5]]
        strip.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"commitment-strip{'-phone' if phone else ''}.png"))
        # the same prompt in Soft Thinking, then Compare holds both with their meters' numbers
        page.evaluate("window.scrollTo(0, 0)")
        page.get_by_label("Soft Thinking").check()
        before = page.locator("#status").inner_text()
        page.locator("#generate").click()
        page.wait_for_function("old => { const el = document.querySelector('#status');"
                               " const s = el ? el.innerText : old;"
                               " return s !== old && s.trim().startsWith('Done'); }", arg=before, timeout=RUN_MS)
        soft = _download_trace(page, f"soft-trace{'-phone' if phone else ''}.json")
        assert soft["mode"] == "soft" and soft["prompt"] == tempo["prompt"]
        _open_tab(page, "Compare")
        numbers = page.locator("#compare-numbers")
        expect(numbers).to_contain_text("faithfulness mean KL", timeout=VIEW_MS)
        row = next(line for line in numbers.inner_text().splitlines() if "faithfulness mean KL" in line)
        assert f"{soft['faithfulness']['mean_kl']:.4f}" in row and f"{tempo['faithfulness']['mean_kl']:.4f}" in row
        mode_row = next(line for line in numbers.inner_text().splitlines() if "setting mode" in line)
        assert mode_row.split()[-2:] == ["soft", "tempo"], mode_row  # A: the newest run, B: the one before
        page.screenshot(path=str(ARTIFACTS / f"compare-soft{'-phone' if phone else ''}.png"))
        # the Study view: the bundled study's table and figure
        _open_tab(page, "Research")
        _open_tab(page, "Study")
        bundled = bundled_study()
        expect(page.locator("#study-heading")).to_contain_text(f"{len(bundled['records'])} prompts", timeout=VIEW_MS)
        first_row = study_table(bundled).splitlines()[4].split("|")[2].strip()  # the attention ratio and its interval
        expect(page.locator("#study-table")).to_contain_text(first_row, timeout=VIEW_MS)
        forest = _plot(page, "#study-plot")[0]
        assert forest["x"][-1] == pytest.approx(bundled["summary"]["attention"]["all"]["ratio"]["mean"])
        page.locator("#study-plot").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"study{'-phone' if phone else ''}.png"))


class Chromium:
    """Pages of one headless Chromium; every script error of any of them is collected in `errors`."""

    def __init__(self, browser):
        self.browser, self.errors = browser, []

    def page(self, phone: bool = False):
        """A 1280x800 page, or a 390x844 phone."""
        page = (self.browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True) if phone
                else self.browser.new_page(viewport={"width": 1280, "height": 800}))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        # Plotly's warning when it draws into a hidden (0 px) plot: figures must wait until they are shown
        page.on("console", lambda m: self.errors.append(m.text) if "went wrong with axis scaling" in m.text else None)
        return page


@pytest.fixture()
def chromium():
    """A headless Chromium for one test; the test fails if any of its pages had a script error."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        session = Chromium(browser)
        yield session
        browser.close()
    assert session.errors == []


PLOT_DATA = """sel => { const el = document.querySelector(sel);
  return el && el.data ? el.data.map(t => ({name: t.name || '', type: t.type, x: t.x || [], y: t.y || [],
                                            z: t.z || [], text: t.text || [], hovertext: t.hovertext || [],
                                            customdata: t.customdata || []})) : null; }"""
PLOT_SHAPES = """sel => { const el = document.querySelector(sel + ' .js-plotly-plot');
  return el && el.layout ? (el.layout.shapes || []).map(s => [s.x0, s.x1]) : null; }"""


def _plot(page, selector: str) -> list[dict]:
    """The traces a Plotly figure on the page draws (what it says, read from the browser), once it has drawn the
    newest value (a figure holds a value that came soon after a costly drawing: widgets.py)."""
    page.wait_for_function("sel => { const el = document.querySelector(sel); return el && !el.__tempoHeld; }",
                           arg=selector + " .js-plotly-plot", timeout=VIEW_MS)
    return page.evaluate(PLOT_DATA, selector + " .js-plotly-plot")


def _open_tab(page, name: str) -> None:
    """Click the tab `name`, through its row's "More tabs" menu where a narrow screen keeps it (a phone)."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    for more in page.get_by_role("button", name="More tabs").all():
        if not more.is_visible():
            continue
        more.click()
        item = page.locator(".overflow-dropdown:not(.hide) button").get_by_text(name, exact=True)
        if item.count() and item.first.is_visible():
            item.first.click()
            return
        more.click()  # not this row's: close its menu again
    raise AssertionError(f"no tab {name!r} on the page")


def _download_trace(page, name: str) -> dict:
    """The trace the page offers for download (Replay & export)."""
    _open_tab(page, "Replay & export")
    link = page.get_by_text("Download JSON trace")
    link.wait_for(timeout=VIEW_MS)
    with page.expect_download() as download:
        link.click()
    saved = ARTIFACTS / name
    download.value.save_as(saved)
    return json.loads(saved.read_text())


def _form(page) -> dict:
    """The settings form as the page holds it: every labelled input's value (checkboxes as true/false)."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('input, textarea')]
      .filter(e => e.getAttribute('aria-label') || (e.closest('label') && e.type === 'checkbox'))
      .map(e => [e.getAttribute('aria-label') || e.closest('label').innerText.trim(),
                 e.type === 'checkbox' ? e.checked : e.value]))""")


SETTING_GROUPS = ("Retroactive pruning", "Dynamic threshold (Bezier / ReLU)", "Parallel sets, cache and prompt",
                  "MCTS and sampling", "Research options")


def _open_settings(page) -> None:
    """Open every group of expert settings (a closed group's inputs are not on the page)."""
    for group in SETTING_GROUPS:
        page.get_by_text(group, exact=True).first.click()
    page.get_by_text("Thinking system prompt (Cogito)").wait_for(timeout=VIEW_MS)
    page.wait_for_timeout(500)


@pytest.fixture()
def engine(embedded_lm):
    """The embedded model in this process: the browser's traces are checked against what it makes."""
    return embedded_lm


_steps = steps_made  # how many steps the status line says the run has made


def test_a_200_step_run_streams_stays_readable_and_compares(app_url, chromium):
    """Frames keep arriving while decoding goes on; at 200 steps every figure is legible at 1280x800; two runs
    with different prompts are compared without downloading anything."""
    from playwright.sync_api import expect
    page = chromium.page()
    page.goto(app_url + "/?max_tokens=200&min_steps=200", wait_until="load")
    expect(page.locator("input[aria-label='number input for Max tokens']")).to_have_value("200", timeout=VIEW_MS)
    assert page.locator("#generate").bounding_box()["y"] < 800  # the main action is above the fold
    page.locator("#prompt textarea").fill("Tell me a long story about a dragon who learns to read.")
    page.locator("#generate").click()
    seen = []
    deadline = time.time() + 300
    while time.time() < deadline:
        status = page.locator("#status").inner_text()
        if status.startswith("Generating"):
            seen.append(_steps(status))
        if status.startswith("Done"):
            break
        page.wait_for_timeout(300)
    assert status.startswith("Done") and _steps(status) == 200, status
    # frames kept arriving while decoding went on: many distinct, increasing step counts
    assert len(set(seen)) >= 8 and seen == sorted(seen), seen
    page.locator("#tempo-tree").scroll_into_view_if_needed()
    expect(page.locator("#tempo-tree .rangeslider-container")).to_be_attached(timeout=VIEW_MS)
    page.screenshot(path=str(ARTIFACTS / "tree-200.png"))
    page.get_by_role("tab", name="Pruning heatmap").click()
    expect(page.locator("#tempo-heatmap .js-plotly-plot")).to_be_visible(timeout=VIEW_MS)
    assert page.locator("#tempo-heatmap").bounding_box()["height"] <= 700  # bounded; it scrolls inside
    page.screenshot(path=str(ARTIFACTS / "heatmap-200.png"))
    # a second run with another prompt, then the Compare tab shows both side by side
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#prompt textarea").fill("Explain photosynthesis to a child.")
    box = page.locator("input[aria-label='number input for Max tokens']")
    box.fill("20")
    box.press("Enter")
    page.get_by_text("Parallel sets, cache and prompt").click()
    min_box = page.locator("input[aria-label='number input for Min steps before EOS']")
    expect(min_box).to_be_visible(timeout=VIEW_MS)
    min_box.fill("0")
    min_box.press("Tab")
    expect(min_box).to_have_value("0")
    page.wait_for_timeout(500)
    page.locator("#generate").click()
    expect(page.locator("#status")).not_to_contain_text("(200 steps)", timeout=VIEW_MS)
    expect(page.locator("#status")).to_contain_text("Done", timeout=RUN_MS)
    page.get_by_role("tab", name="Compare").click()
    numbers = page.locator("#compare-numbers")
    expect(numbers).to_contain_text("setting prompt", timeout=VIEW_MS)
    expect(numbers).to_contain_text("photosynthesis")
    expect(numbers).to_contain_text("dragon")
    expect(page.locator("#compare-tree-a .js-plotly-plot")).to_be_visible(timeout=VIEW_MS)
    expect(page.locator("#compare-diff")).to_contain_text("only in", timeout=VIEW_MS)
    page.locator("#compare-numbers").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "compare.png"))

    phone = chromium.page(phone=True)
    phone.goto(app_url + "/?max_tokens=200&min_steps=200", wait_until="load")
    expect(phone.locator("input[aria-label='number input for Max tokens']")).to_have_value("200", timeout=VIEW_MS)
    assert phone.locator("#generate").bounding_box()["y"] < 844
    phone.locator("#generate").click()
    expect(phone.locator("#status")).to_contain_text("Done", timeout=RUN_MS)
    phone.screenshot(path=str(ARTIFACTS / "phone-top.png"))
    phone.locator("#tempo-tree").scroll_into_view_if_needed()
    phone.screenshot(path=str(ARTIFACTS / "phone-tree-200.png"))
    # nothing wider than the screen: no sideways scrolling
    assert phone.evaluate("document.documentElement.scrollWidth") <= 392


def test_a_class_walks_the_learn_tab_steps_predicts_and_steers(app_url, engine, chromium):
    """The Learn tab start to end; a step-mode run with one prediction; "continue from here" on a tree node."""
    from playwright.sync_api import expect

    from components.figures.lessons import LESSONS
    page = chromium.page()
    page.goto(app_url + "/", wait_until="load")
    page.get_by_role("tab", name="Learn").click()
    for i, lesson in enumerate(LESSONS):
        expect(page.locator("#lesson-text")).to_contain_text(lesson.title, timeout=VIEW_MS)
        expect(page.locator("#lesson-where")).to_contain_text(f"Lesson {i + 1} of {len(LESSONS)}")
        expect(page.locator("#lesson-figure .js-plotly-plot")).to_be_visible(timeout=VIEW_MS)
        (expect(page.locator("#lesson-prev")).to_be_disabled if i == 0 else
         expect(page.locator("#lesson-prev")).to_be_enabled)()
        (expect(page.locator("#lesson-next")).to_be_disabled if i == len(LESSONS) - 1 else
         expect(page.locator("#lesson-next")).to_be_enabled)()
        # every token the lesson names is in the figure beside it (a label, a hover text or an outline)
        page.wait_for_timeout(300)
        words = json.dumps(_plot(page, "#lesson-figure"), ensure_ascii=False) + page.evaluate(
            "() => [...document.querySelectorAll('#lesson-figure .annotation-text')].map(e => e.textContent)"
            ".join(' ')")
        for token in page.locator("#lesson-text code").all_inner_texts():
            assert token in words, (i, token)
        if i in (1, 3, 5):
            page.wait_for_timeout(400)
            page.screenshot(path=str(ARTIFACTS / f"learn-{i + 1}.png"))
        if i < len(LESSONS) - 1:
            page.locator("#lesson-next").click()
    page.locator("#lesson-try").click()  # the last lesson's settings go into the form, and Explore opens
    expect(page.locator("#generate")).to_be_visible(timeout=VIEW_MS)

    # step mode with one prediction
    page.locator("#prompt textarea").fill("Name three colours of the sea.")
    box = page.locator("input[aria-label='number input for Max tokens']")
    box.fill("12")
    box.press("Enter")
    page.get_by_text("Step by step · predict first").click()
    page.locator("#predict input").check()
    page.locator("#step").click()
    choices = page.locator("#predict-choices label")
    expect(choices.first).to_be_visible(timeout=VIEW_MS)
    expect(page.locator("#status")).to_contain_text("which tokens pass")
    choices.first.click()
    page.locator("#reveal").click()
    expect(page.locator("#reveal-result")).to_contain_text("right", timeout=VIEW_MS)
    expect(page.locator("#reveal-result")).to_contain_text("running score")
    expect(page.locator("#reflection")).to_contain_text("Think:")
    page.locator("#step-mode").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "predict.png"))
    page.locator("#predict input").uncheck()
    page.locator("#step").click()
    expect(page.locator("#status")).to_contain_text("at step 1 (2 steps)", timeout=VIEW_MS)

    # a recorded run (instant), a node, and "continue from here"
    page.locator("#recorded-tempo").click()
    expect(page.locator("#status")).to_contain_text("Recorded run", timeout=VIEW_MS)
    page.locator("#tempo-tree").scroll_into_view_if_needed()
    points = page.locator("#tempo-tree .scatterlayer .trace .points path")
    expect(points.first).to_be_visible(timeout=VIEW_MS)
    box = points.nth(2).bounding_box()  # the second candidate of the first set (the recording branches early)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(page.get_by_text("token id").first).to_be_visible(timeout=VIEW_MS)
    page.locator("#what-if").click()
    expect(page.locator("#what-if-result")).to_contain_text("at lower thresholds", timeout=VIEW_MS)
    details = page.locator("#node-details").inner_text()
    step = int(re.search(r"logical step (\d+)", details).group(1))
    index = int(re.search(r"rank (\d+) of", details).group(1)) - 1
    page.locator("#continue-here").click()
    expect(page.locator("#status")).to_contain_text("Done", timeout=RUN_MS)
    page.screenshot(path=str(ARTIFACTS / "continued.png"))
    # the continued run the page holds is the engine's continue_from of the recorded run at that node
    from components.figures.recordings import recorded
    from tempo_core.steer import continue_from
    continued = _download_trace(page, "continued-trace.json")
    original = recorded("tempo")
    made = None
    for made in continue_from(engine, original, step, index):
        pass
    made = made.trace
    assert [st["step"] for st in continued["steps"]] == list(range(len(made.steps)))
    assert [[c["token_id"] for c in st["candidates"]] for st in continued["steps"]] == \
           [[c.token_id for c in st.candidates] for st in made.steps]
    assert continued["text"] == made.text
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-a input")).to_have_value(re.compile("continued"), timeout=VIEW_MS)
    expect(page.locator("#compare-b input")).to_have_value(re.compile("recorded"))
    expect(page.locator("#compare-diff")).to_contain_text("only in", timeout=VIEW_MS)
    diff = {t["name"]: t for t in _plot(page, "#compare-diff")}
    assert diff["only in A"]["x"] and diff["only in B"]["x"] and diff["same in both"]["x"]  # every colour
    points = [(x, y) for name in ("only in A", "only in B", "same in both")
              for x, y in zip(diff[name]["x"], diff[name]["y"])]
    assert len(points) == len(set(points))  # nothing hides under anything else
    page.locator("#compare-diff").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "compare-continued.png"))

    phone = chromium.page(phone=True)
    phone.goto(app_url + "/", wait_until="load")
    phone.get_by_role("tab", name="Learn").click()
    phone.locator("#lesson-next").click()
    expect(phone.locator("#lesson-where")).to_contain_text("Lesson 2 of", timeout=VIEW_MS)
    phone.wait_for_timeout(400)
    phone.screenshot(path=str(ARTIFACTS / "phone-learn.png"), full_page=True)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 392


def test_demo_mode_walkthrough_generates_and_steps_within_the_classroom_caps(demo_url, chromium):
    """A teacher's first clicks on a classroom server: each lesson's Try it live, the recorded examples and the
    Examples rows, each followed by Generate (and Step), all within the demo caps, with no error anywhere."""
    from playwright.sync_api import expect

    from components.figures.lessons import LESSONS
    from components.server.forms import EXAMPLES
    page = chromium.page()
    page.goto(demo_url + "/", wait_until="load")
    expect(page.locator("#lesson-text")).to_contain_text(LESSONS[0].title, timeout=VIEW_MS)

    def generate_and_step(what: str) -> None:
        before = page.locator("#status").inner_text()
        page.locator("#generate").click()
        page.wait_for_function("prev => { const el = document.querySelector('#status');"
                               " const t = el ? el.innerText : prev;"
                               " return t !== prev && (t.startsWith('Done') || t.includes('Error')); }",
                               arg=before, timeout=RUN_MS)
        assert page.locator("#status").inner_text().startswith("Done"), (what, page.locator("#status").inner_text())
        page.locator("#step").click()  # a classroom predicts first: the step's question, or the step itself
        expect(page.locator("#status")).to_have_text(re.compile(r"Step 0: which tokens pass|\(1 step\)"),
                                                     timeout=VIEW_MS)
        assert page.locator(".toast-body").count() == 0, (what, page.locator(".toast-body").all_inner_texts())

    for i in range(len(LESSONS)):
        page.get_by_role("tab", name="Learn").click()
        expect(page.locator("#lesson-where")).to_contain_text(f"Lesson {i + 1} of", timeout=VIEW_MS)
        if i in (0, 6, 7):  # greedy, the threshold curve (32 tokens) and faithfulness (a research phase)
            page.locator("#lesson-try").click()
            expect(page.locator("#generate")).to_be_visible(timeout=VIEW_MS)
            generate_and_step(f"lesson {i + 1}")
            page.get_by_role("tab", name="Learn").click()
        if i < len(LESSONS) - 1:
            page.locator("#lesson-next").click()
    page.get_by_role("tab", name="Explore").click()
    for name in ("greedy", "tempo", "curve"):
        page.locator(f"#recorded-{name}").click()
        expect(page.locator("#status")).to_contain_text("Recorded run", timeout=VIEW_MS)
        generate_and_step(f"recorded {name}")
    longest = max(EXAMPLES, key=lambda row: row[2])  # 60 tokens, over the classroom's 48
    page.get_by_text(longest[0], exact=True).first.click()
    expect(page.locator("#prompt textarea")).to_have_value(longest[0], timeout=VIEW_MS)
    expect(page.locator("input[aria-label='number input for Max tokens']")).to_have_value("48")
    generate_and_step("the longest example")
    # the expert settings open right under their switch
    page.locator("#advanced input").check()
    expect(page.locator("#expert-settings")).to_be_visible(timeout=VIEW_MS)
    switch = page.locator("#advanced").bounding_box()
    assert 0 < page.locator("#expert-settings").bounding_box()["y"] - (switch["y"] + switch["height"]) < 40
    page.screenshot(path=str(ARTIFACTS / "demo-explore.png"))

    phone = chromium.page(phone=True)
    phone.goto(demo_url + "/", wait_until="load")
    expect(phone.locator("#lesson-text")).to_contain_text(LESSONS[0].title, timeout=VIEW_MS)
    for i in range(len(LESSONS)):
        if i in (0, 2, 5, 7):
            phone.wait_for_timeout(500)
            phone.screenshot(path=str(ARTIFACTS / f"phone-lesson-{i + 1}.png"), full_page=True)
        if i < len(LESSONS) - 1:
            phone.locator("#lesson-next").click()
            expect(phone.locator("#lesson-where")).to_contain_text(f"Lesson {i + 2} of", timeout=VIEW_MS)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 392
    phone.get_by_role("tab", name="Explore").click()
    phone.wait_for_timeout(500)
    phone.screenshot(path=str(ARTIFACTS / "phone-demo-explore.png"), full_page=True)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 392
    # the Examples tables wrap their cells instead of scrolling sideways inside the page
    assert phone.evaluate("Math.max(...[...document.querySelectorAll('.table-wrap')]"
                          ".map(e => e.scrollWidth - e.clientWidth))") <= 1
