"""The settings form: one Gradio control per engine setting, grouped so the default view stays simple.

`make_form` creates the controls (not yet placed: the page owns them, and every tab may read or fill them);
`lay_out_form` places them where the Explore tab calls it, in the groups below.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from tempo_core.config import CURVE_FORMS, FIELDS, PRUNING_MODES
from tempo_core.serving.limits import Limits

from ..server.forms import MODES, page_defaults

Component = gr.components.Component
# the expert groups: (accordion title, rows of setting names; a row of several sits side by side)
GROUPS: list[tuple[str, list[tuple[str, ...]]]] = [
    ("Retroactive pruning", [("use_retroactive_pruning",), ("attention_threshold",), ("pruning_window",),
                             ("complete_pruning_mode",), ("use_relative_attention", "relative_threshold"),
                             ("use_multi_scale_attention", "num_layers_to_use"), ("multi_scale_min_weight",),
                             ("use_sigmoid_threshold", "sigmoid_steepness"), ("preserve_isolated_tokens",)]),
    ("Dynamic threshold (Bezier / ReLU)", [("dynamic_threshold",), ("final_threshold",), ("dynamic_threshold_form",),
                                           ("bezier_p1", "bezier_p2"), ("use_relu", "relu_activation_point")]),
    ("Parallel sets, cache and prompt", [("max_parallel_tokens",), ("allow_intraset_token_visibility",),
                                         ("use_custom_rope",), ("disable_kv_cache",), ("min_steps",), ("temperature",),
                                         ("enable_thinking",), ("raw_prompt",), ("show_token_ids",)]),
    ("MCTS and sampling", [("mcts_simulations", "mcts_depth"), ("mcts_c_puct",), ("do_sample",), ("top_p", "top_k"),
                           ("seed",)]),
    ("Research options", [("faithfulness",), ("commitment",), ("faithfulness_paths",)]),
]


def setting_slider(*args: Any, **kwargs: Any) -> gr.Slider:
    """A slider whose value reaches the settings' own validation unchanged, so that an out-of-range value sent
    through the API gets the message that names the setting and its range (Gradio's own check says only
    "Value 500 is greater than maximum value 200"). Per instance: a subclass would make Gradio write a .pyi."""
    slider = gr.Slider(*args, **kwargs)
    slider.preprocess = lambda payload: payload
    return slider


def _unplaced_slider(*args: Any, **kwargs: Any) -> gr.Slider:
    return setting_slider(*args, **kwargs, render=False)


def _help(name: str) -> str:
    return FIELDS[name].metadata["help"]


def make_form(limits: Limits) -> dict[str, Component]:
    """{setting name: control} (plus 'mode'), the prompt first, none placed yet. Sliders end at this server's caps
    (`limits`); every control starts at the page's defaults."""
    d = page_defaults(limits)
    unplaced = {"render": False}
    return {
        "prompt": gr.Textbox(label="Prompt", lines=3, placeholder="Ask something…", elem_id="prompt", value=d.prompt,
                             **unplaced),
        "selection_threshold": _unplaced_slider(0.0, 1.0, value=d.selection_threshold, step=0.01,
                                              label="Selection threshold", info=_help("selection_threshold")),
        "max_tokens": _unplaced_slider(1, limits.max_tokens, value=d.max_tokens, step=1, label="Max tokens"),
        "mode": gr.Radio(list(MODES), value="TEMPO", label="Mode", info="Soft Thinking feeds each set as one input: "
                         "its tokens' embeddings mixed by probability", **unplaced),
        # retroactive pruning: on by default in the app, at a threshold where the examples visibly prune
        "use_retroactive_pruning": gr.Checkbox(value=d.use_retroactive_pruning, label="Prune by later attention",
                                               **unplaced),
        "attention_threshold": _unplaced_slider(0.0, 0.2, value=d.attention_threshold, step=0.001,
                                              label="Attention threshold"),
        "pruning_window": _unplaced_slider(1, 16, value=d.pruning_window, step=1, label="Pruning window (steps)"),
        "complete_pruning_mode": gr.Dropdown(list(PRUNING_MODES), value=d.complete_pruning_mode,
                                             label="When a whole set fails", **unplaced),
        "use_relative_attention": gr.Checkbox(value=False, label="Relative attention", **unplaced),
        "relative_threshold": _unplaced_slider(0.0, 1.0, value=d.relative_threshold, step=0.05,
                                             label="Relative threshold"),
        "use_multi_scale_attention": gr.Checkbox(value=False, label="Multi-scale layer weights", **unplaced),
        "num_layers_to_use": gr.Number(value=0, precision=0, label="Last N layers (0 = all)", **unplaced),
        "multi_scale_min_weight": _unplaced_slider(0.0, 1.0, value=d.multi_scale_min_weight, step=0.05,
                                                 label="Multi-scale weight of the first layer"),
        "use_sigmoid_threshold": gr.Checkbox(value=False, label="Sigmoid (probabilistic) decision", **unplaced),
        "sigmoid_steepness": _unplaced_slider(0.5, 50, value=d.sigmoid_steepness, step=0.5, label="Steepness"),
        "preserve_isolated_tokens": gr.Checkbox(value=True, label="Never prune single-candidate steps", **unplaced),
        # the threshold's curve over the run
        "dynamic_threshold": gr.Checkbox(value=False, label="Threshold follows a curve over the run", **unplaced),
        "final_threshold": _unplaced_slider(0.0, 0.5, value=d.final_threshold, step=0.005, label="Final threshold"),
        "dynamic_threshold_form": gr.Radio(list(CURVE_FORMS), value=d.dynamic_threshold_form,
                                           label="Curve form (seed_scaled: threshold x curve, from 0)", **unplaced),
        "bezier_p1": _unplaced_slider(0.0, 1.0, value=d.bezier_p1, step=0.05, label="Bezier p1"),
        "bezier_p2": _unplaced_slider(0.0, 1.0, value=d.bezier_p2, step=0.05, label="Bezier p2"),
        "use_relu": gr.Checkbox(value=False, label="ReLU instead of Bezier", **unplaced),
        "relu_activation_point": _unplaced_slider(0.0, 0.95, value=d.relu_activation_point, step=0.05,
                                                label="ReLU starts at"),
        # parallel sets, cache and prompt
        "max_parallel_tokens": _unplaced_slider(1, limits.max_parallel_tokens, value=d.max_parallel_tokens, step=1,
                                              label="Max parallel tokens per step"),
        "allow_intraset_token_visibility": gr.Checkbox(value=False, label="Siblings see each other", **unplaced),
        "use_custom_rope": gr.Checkbox(value=True, label="Siblings share one position (off: consecutive positions, "
                                                         "a baseline)", **unplaced),
        "disable_kv_cache": gr.Checkbox(value=False, label="Disable KV cache (recompute every step)", **unplaced),
        "min_steps": _unplaced_slider(0, limits.max_tokens, value=0, step=1, label="Min steps before EOS"),
        "temperature": _unplaced_slider(0.05, 3.0, value=d.temperature, step=0.05, label="Temperature"),
        "enable_thinking": gr.Checkbox(value=False, label="Thinking system prompt (Cogito)", **unplaced),
        "raw_prompt": gr.Checkbox(value=False, label="Raw prompt (no chat template)", **unplaced),
        "show_token_ids": gr.Checkbox(value=False, label="Show token ids in the text", **unplaced),
        # MCTS and sampling
        "mcts_simulations": _unplaced_slider(1, limits.mcts_simulations, value=d.mcts_simulations, step=1,
                                           label="MCTS simulations"),
        "mcts_depth": _unplaced_slider(1, limits.mcts_depth, value=d.mcts_depth, step=1, label="MCTS depth"),
        "mcts_c_puct": _unplaced_slider(0.1, 10.0, value=d.mcts_c_puct, step=0.1, label="MCTS c_puct"),
        "do_sample": gr.Checkbox(value=False, label="Sample (greedy mode only)", **unplaced),
        "top_p": _unplaced_slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p"),
        "top_k": gr.Number(value=0, precision=0, label="Top-k (0 = off)", **unplaced),
        "seed": gr.Number(value=d.seed, precision=0, label="Seed", **unplaced),
        # research options
        "faithfulness": gr.Checkbox(value=False, label="Measure faithfulness after the run (Research tab)",
                                    **unplaced),
        "commitment": gr.Checkbox(value=False, label="Commitment strip (logit lens): where each step settles, layer "
                                                     "by layer (under the tree)", **unplaced),
        "faithfulness_paths": _unplaced_slider(1, limits.faithfulness_paths, value=d.faithfulness_paths, step=1,
                                             label="Explicit paths per step (most probable)"),
    }


def lay_out_form(form: dict[str, Component], expert_visible: bool = True) -> None:
    """Place the form after its prompt (which the caller places, with what goes right under it): the threshold,
    the length and the mode, then the expert groups, each in a closed accordion. `expert_visible`: show the expert
    groups (a classroom page hides them behind one switch, right above them)."""
    for name in ("selection_threshold", "max_tokens", "mode"):
        form[name].render()
    advanced = gr.Checkbox(value=False, label="Advanced settings", visible=not expert_visible, elem_id="advanced")
    with gr.Column(visible=expert_visible, elem_id="expert-settings") as expert:
        for title, rows in GROUPS:
            with gr.Accordion(title, open=False):
                for row in rows:
                    if len(row) == 1:
                        form[row[0]].render()
                        continue
                    with gr.Row():
                        for name in row:
                            form[name].render()
    advanced.change(lambda on: gr.Column(visible=on), advanced, expert, queue=False, api_visibility="private")
