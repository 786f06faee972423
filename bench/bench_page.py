"""How the page feels after a long run: a finished 200-step run in headless Chromium at 1280x800, quiet machine.

    .venv/bin/python bench/bench_page.py [--steps 200] [--rounds 5] [--out bench/results/page.json]

Measured in the browser (`performance.now()` and a long-task observer), the embedded model serving:
- click to details: a tree node clicked -> the node's details on screen (one server round trip: the view
  group's handler rebuilds the tree with the node ringed and writes the details);
- slider drag: the range slider under the tree dragged by a step width, from the mouse going down to the tree
  redrawn at the new range and two animation frames after (Plotly alone, no server);
- main-thread blocks: every long task (> 50 ms) from the Generate click to 10 s after the last frame; the
  longest after the last frame, and the longest overall.
Every time runs from the mouse going down to the last redraw it causes (two animation frames after the change).
Targets (issue 28): click to details <= 150 ms, slider drag <= 100 ms, no main-thread block > 300 ms after the last
frame.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from bench_streaming import start_server

ROOT = Path(__file__).resolve().parents[1]

OBSERVE = """
window.__long = [];
new PerformanceObserver(l => l.getEntries().forEach(e => window.__long.push([e.startTime, e.duration])))
  .observe({type: 'longtask', buffered: true});
"""


def main() -> None:
    from playwright.sync_api import sync_playwright
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Debian's chromium (make browser-deps)")
    proc, url = start_server()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.add_init_script(OBSERVE)
            page.goto(f"{url}/?max_tokens={args.steps}&min_steps={args.steps}", wait_until="load")
            page.locator("#generate").wait_for(timeout=120_000)
            page.wait_for_timeout(1500)
            page.locator("#generate").click()
            page.wait_for_function("document.querySelector('#status').innerText.startsWith('Done')",
                                   timeout=600_000, polling=100)
            done_at = page.evaluate("performance.now()")
            page.wait_for_timeout(10_000)
            long_tasks = page.evaluate("window.__long")
            after = [d for t, d in long_tasks if t + d >= done_at]

            page.locator("#tempo-tree").scroll_into_view_if_needed()
            drags = []
            slider = page.locator("#tempo-tree .rangeslider-slidebox")
            for i in range(args.rounds):
                box = slider.bounding_box()
                page.evaluate("""() => {
                  const el = document.querySelector('#tempo-tree .js-plotly-plot');
                  window.__range = JSON.stringify(el.layout.xaxis.range);
                }""")
                x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                page.mouse.move(x, y)
                page.evaluate("window.__t0 = performance.now()")  # from the mouse going down
                page.mouse.down()
                page.mouse.move(x - 30 - 10 * i, y, steps=3)
                page.mouse.up()
                page.wait_for_function("""() => {
                  const el = document.querySelector('#tempo-tree .js-plotly-plot');
                  if (JSON.stringify(el.layout.xaxis.range) === window.__range) return false;
                  window.__t1 = performance.now(); return true;
                }""", timeout=30_000, polling="raf")
                # the redraw is done once two animation frames have passed after the range changed
                drags.append(page.evaluate("""() => new Promise(r => requestAnimationFrame(() =>
                  requestAnimationFrame(() => r(performance.now() - window.__t0))))"""))
            # nodes in view: the first steps (a long run's last ones are often one collapsed stretch)
            page.evaluate("Plotly.relayout(document.querySelector('#tempo-tree .js-plotly-plot'), "
                          "{'xaxis.range': [-0.6, 24.5]})")
            page.wait_for_timeout(1000)
            area = page.locator("#tempo-tree .nsewdrag").first.bounding_box()
            # the candidates' markers (the third trace, after the two edge traces), those inside the plot area
            boxes = [b for b in (p.bounding_box() for p in
                                 page.locator("#tempo-tree .scatterlayer .trace:nth-child(3) .points path").all())
                     if b and area["x"] < b["x"] + b["width"] / 2 < area["x"] + area["width"]
                     and area["y"] < b["y"] + b["height"] / 2 < area["y"] + area["height"]]
            # the node details (found once by their text, so that polling reads one element, not the page)
            page.evaluate("""() => { window.__details = [...document.querySelectorAll('.prose, .md')]
                .filter(e => e.innerText.includes('Select a candidate')).pop(); }""")
            clicks = []
            for i in range(args.rounds):
                box = boxes[(3 * i) % len(boxes)]
                page.evaluate("window.__detailsText = window.__details.innerText")
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.evaluate("window.__t0 = performance.now()")
                page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.wait_for_function("""() => {
                  const text = window.__details.innerText;
                  return text.includes('token id') && text !== window.__detailsText;
                }""", timeout=30_000, polling="raf")
                clicks.append(page.evaluate("""() => new Promise(r => requestAnimationFrame(() =>
                  requestAnimationFrame(() => r(performance.now() - window.__t0))))"""))

            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "steps": args.steps,
        "click_to_details_ms": {"median": statistics.median(clicks), "max": max(clicks), "all": clicks},
        "slider_drag_ms": {"median": statistics.median(drags), "max": max(drags), "all": drags},
        "long_tasks_after_last_frame_ms": {"max": max(after, default=0.0), "count": len(after),
                                           "total": sum(after)},
        "longest_task_whole_run_ms": max((d for _, d in long_tasks), default=0.0),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
