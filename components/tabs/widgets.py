"""Two Gradio pieces the live page is made of: a Plotly view and the branching text.

Both are `gr.HTML` components whose value is structured data (a Plotly figure dict; the text as one HTML piece
per step), drawn in the browser. While a run streams, Gradio sends each output as a diff against the previous
frame, so a frame carries the new steps and the changed marks, never the whole figure again. Clicking a node or
a token sends `{node: "step:index"}` through the component's `click` event.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import plotly

PLOTLY_JS = plotly.__path__[0] + "/package_data/plotly.min.js"  # served at /assets/plotly.min.js (no CDN)
PLOTLY_HEAD = '<script src="assets/plotly.min.js"></script>'

PHONE_STEPS = 9  # tree columns in view on a screen under 600 px wide

_PLOT_JS = f"const PHONE_STEPS = {PHONE_STEPS};" + """
const ring = (el, p) => {
  let r = el.querySelector('.tempo-ring');
  if (!r) { r = document.createElement('div'); r.className = 'tempo-ring'; el.appendChild(r); }
  r.style.left = (p.xaxis._offset + p.xaxis.l2p(p.x) - 17) + 'px';
  r.style.top = (p.yaxis._offset + p.yaxis.l2p(p.y) - 17) + 'px';
  r.style.display = 'block';
};
const draw = () => {
  const v = props.value;
  const el = element.querySelector('.tempo-plot');
  if (!v || !v.data || !el || !window.Plotly) return;
  if (!el.clientWidth) {
    // a hidden tab: Plotly cannot scale axes in 0 px ("Something went wrong with axis scaling") and the work
    // is wasted; draw the latest value once the plot is shown
    el.__tempoPending = true;
    if (!el.__tempoWatch && window.ResizeObserver) {
      el.__tempoWatch = new ResizeObserver(() => { if (el.clientWidth && el.__tempoPending) draw(); });
      el.__tempoWatch.observe(el);
    }
    return;
  }
  el.__tempoPending = false;
  // Gradio calls this again for an event that left the value as it was (gr.skip()): a 200-step tree costs
  // Plotly about a second to redraw on a small machine, comparing it costs a few ms
  const json = JSON.stringify(v);
  if (json === el.__tempoDrawn && el.clientWidth === el.__tempoWidth) return;
  el.__tempoDrawn = json;
  el.__tempoWidth = el.clientWidth;
  const old = el.querySelector('.tempo-ring');
  if (old) old.style.display = 'none';  // a redrawn figure rings its own selection
  let layout = v.layout;
  const x = layout.xaxis;
  if (el.clientWidth && el.clientWidth < 600 && x && x.range && v.layout.meta === 'tempo-tree' &&
      x.range[1] - x.range[0] > PHONE_STEPS + 1) {
    // a phone: the newest PHONE_STEPS steps in view, a range slider under the tree for the whole run
    const hi = x.range[1];
    layout = Object.assign({}, layout, {xaxis: Object.assign({}, x, {range: [hi - PHONE_STEPS, hi],
      rangeslider: x.rangeslider || {visible: true, thickness: 0.07}})});
  }
  if (el.clientWidth && el.clientWidth < 600) layout = Object.assign({}, layout, {showlegend: false});
  const t0 = performance.now();
  window.Plotly.react(el, v.data, layout, {displaylogo: false, responsive: true, displayModeBar: false});
  el.__tempoFree = performance.now() + 3 * (performance.now() - t0);
  if (!el.__tempoHooked) {
    el.__tempoHooked = true;
    el.on('plotly_click', (ev) => {
      const p = ev.points && ev.points[0];
      if (!p || typeof p.customdata !== 'string') return;
      // a candidate clicked in the tree is ringed here at once; the server then sends only its details (a
      // 200-step tree takes Plotly about a second to redraw on a small machine)
      if (p.customdata.startsWith('run:')) { trigger('expand', {node: p.customdata}); return; }  // a stretch
      if ((props.value.layout || {}).meta === 'tempo-tree' && /^\\d+:\\d+$/.test(p.customdata)) ring(el, p);
      // the source is the figure's own name (its layout's meta), not whichever ancestor has an id
      trigger('click', {node: p.customdata, source: (props.value.layout || {}).meta || ''});
    });
    el.on('plotly_relayout', () => { const r = el.querySelector('.tempo-ring'); if (r) r.style.display = 'none'; });
  }
};
// A streamed run sends up to 4 frames a second; a phone may need longer than that to draw one. Frames that come
// while the last drawing's cost (x3) has not passed are held, and only the newest is drawn when it has: the page
// spends at most a quarter of its time drawing, stays responsive, and always ends on the last value.
const drawSoon = () => {
  const el = element.querySelector('.tempo-plot');
  const wait = el ? (el.__tempoFree || 0) - performance.now() : 0;
  if (wait <= 0) { draw(); return; }
  if (!el.__tempoHeld) el.__tempoHeld = setTimeout(() => { el.__tempoHeld = null; draw(); }, wait);
};
watch('value', drawSoon);
draw();
"""

_TEXT_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('[data-node]');
  if (t) trigger('click', {node: t.dataset.node});
});
"""

TEXT_TEMPLATE = """
<div class="tempo-text">
  <details open><summary>Branching text · ${value && value.n ? value.n : 0} steps
    <span class="hint">(click a token for its details; ⏎ newline, · space, struck through: pruned)</span></summary>
    <div class="branching">${value && value.steps && value.steps.length ? value.steps.join('') : '<em>no tokens yet</em>'}</div>
  </details>
  <div class="clean"><b>Most probable surviving path:</b> ${value && value.clean ? value.clean : ''}</div>
</div>
"""

CSS = """
.tempo-text {font-family: ui-monospace, monospace; font-size: 15px; line-height: 1.9}
.tempo-text summary {font-family: sans-serif; font-size: 13px; color: #555; cursor: pointer}
.tempo-text .hint {color: #888}
.tempo-text .branching {max-height: 11.5em; overflow-y: auto; overflow-wrap: anywhere}
.tempo-text .tok {cursor: pointer; padding: 0 1px; border-radius: 3px}
.tempo-text .tok:hover {background: #fff3c4}
.tempo-text .ws {color: #8a8aa0}
.tempo-text .pruned {text-decoration: line-through; opacity: .55}
.tempo-text .set {background: #f1edff; border-radius: 4px; white-space: nowrap}
.tempo-text .clean {margin-top: .6em; font-family: sans-serif; font-size: 14px; color: #444; max-height: 6em;
                    overflow-y: auto}
.tempo-plot {width: 100%; position: relative}
.tempo-ring {position: absolute; width: 34px; height: 34px; border: 3px solid #1f77b4; border-radius: 50%;
             box-sizing: border-box; pointer-events: none; display: none; z-index: 2}
.tempo-range-note {color: #b42318; font-size: 12.5px; margin-top: 4px}
"""


# Gradio's sliders clamp a typed value to their range without a word (-1 becomes 0). This listener runs first
# (capture phase) and says what happened next to the box, so that no value is ever changed silently.
RANGE_NOTE_HEAD = """<script>
document.addEventListener('change', (e) => {
  const el = e.target;
  if (!(el instanceof HTMLInputElement) || el.type !== 'number' || el.min === '' || el.max === '') return;
  const v = parseFloat(el.value), lo = parseFloat(el.min), hi = parseFloat(el.max);
  const block = el.closest('.block') || el.parentElement;
  let note = block.querySelector('.tempo-range-note');
  if (!Number.isFinite(v) || (v >= lo && v <= hi)) { if (note) note.remove(); return; }
  if (!note) { note = document.createElement('div'); note.className = 'tempo-range-note'; block.appendChild(note); }
  const name = (el.getAttribute('aria-label') || '').replace('number input for ', '') || 'value';
  note.textContent = `${name}: ${el.value} is outside [${lo}, ${hi}]; set to ${v < lo ? lo : hi}`;
}, true);
</script>"""


def plotly_view(figure: dict | None = None, elem_id: str | None = None, max_height: int | None = None,
                **kwargs: Any) -> gr.HTML:
    """A Plotly figure drawn from a figure dict (components/figures); `max_height` scrolls taller figures."""
    return gr.HTML(value=figure or {"data": [], "layout": {}}, html_template="<div class='tempo-plot'></div>",
                   js_on_load=_PLOT_JS, head=PLOTLY_HEAD, elem_id=elem_id, max_height=max_height, **kwargs)


def branching_text(elem_id: str = "tempo-text", **kwargs: Any) -> gr.HTML:
    return gr.HTML(value={"steps": [], "clean": "", "n": 0}, html_template=TEXT_TEMPLATE, js_on_load=_TEXT_JS,
                   elem_id=elem_id, **kwargs)
