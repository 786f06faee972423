"""The settings form: one Gradio control per engine setting, grouped so the default view stays simple."""

from __future__ import annotations

from typing import Any

import gradio as gr

from tempo_core.config import CURVE_FORMS, FIELDS, PRUNING_MODES, TempoSettings
from tempo_core.serving.limits import Limits

from ..server.forms import MODES, page_defaults


def setting_slider(*args: Any, **kwargs: Any) -> gr.Slider:
    """A slider whose value reaches the settings' own validation unchanged, so that an out-of-range value sent
    through the API gets the message that names the setting and its range (Gradio's own check says only
    "Value 500 is greater than maximum value 200"). Per instance: a subclass would make Gradio write a .pyi."""
    slider = gr.Slider(*args, **kwargs)
    slider.preprocess = lambda payload: payload
    return slider


def _help(name: str) -> str:
    return FIELDS[name].metadata["help"]


def prompt_box(limits: Limits) -> gr.Textbox:
    """The prompt, first in the form (what goes right under it is the caller's: the run buttons)."""
    return gr.Textbox(label="Prompt", lines=3, placeholder="Ask something…", elem_id="prompt",
                      value=page_defaults(limits).prompt)


def build_controls(limits: Limits, prompt: gr.Textbox, expert_visible: bool = True
                   ) -> dict[str, gr.components.Component]:
    """Creates the rest of the form in the current Blocks context; returns {setting name: component} (plus 'mode'),
    the prompt first. Sliders end at this server's caps (`limits`); `expert_visible`: show the expert groups (demo
    mode hides them behind one switch)."""
    d = page_defaults(limits)
    c: dict[str, Any] = {"prompt": prompt}
    c["selection_threshold"] = setting_slider(0.0, 1.0, value=d.selection_threshold, step=0.01,
                                         label="Selection threshold", info=_help("selection_threshold"))
    c["max_tokens"] = setting_slider(1, limits.max_tokens, value=d.max_tokens, step=1, label="Max tokens")
    c["mode"] = gr.Radio(list(MODES), value="TEMPO", label="Mode",
                         info="Soft Thinking feeds each set as one input: its tokens' embeddings mixed by probability")
    # a classroom page hides the expert groups behind one switch, right above them
    advanced = gr.Checkbox(value=False, label="Advanced settings", visible=not expert_visible, elem_id="advanced")
    with gr.Column(visible=expert_visible, elem_id="expert-settings") as expert:
        _pruning_group(c, d, limits)
        _curve_group(c, d, limits)
        _parallel_group(c, d, limits)
        _mcts_group(c, d, limits)
        _research_group(c, d, limits)
    advanced.change(lambda on: gr.Column(visible=on), advanced, expert, queue=False, api_visibility="private")
    return c


def _pruning_group(c: dict[str, Any], d: TempoSettings, limits: Limits) -> None:
    """Retroactive pruning."""
    with gr.Accordion("Retroactive pruning", open=False):
        # on by default in the app, at a threshold where the examples visibly prune (a few candidates each)
        c["use_retroactive_pruning"] = gr.Checkbox(value=d.use_retroactive_pruning,
                                                   label="Prune by later attention")
        c["attention_threshold"] = setting_slider(0.0, 0.2, value=d.attention_threshold, step=0.001,
                                             label="Attention threshold")
        c["pruning_window"] = setting_slider(1, 16, value=d.pruning_window, step=1, label="Pruning window (steps)")
        c["complete_pruning_mode"] = gr.Dropdown(list(PRUNING_MODES), value=d.complete_pruning_mode,
                                                 label="When a whole set fails")
        with gr.Row():
            c["use_relative_attention"] = gr.Checkbox(value=False, label="Relative attention")
            c["relative_threshold"] = setting_slider(0.0, 1.0, value=d.relative_threshold, step=0.05,
                                                label="Relative threshold")
        with gr.Row():
            c["use_multi_scale_attention"] = gr.Checkbox(value=False, label="Multi-scale layer weights")
            c["num_layers_to_use"] = gr.Number(value=0, precision=0, label="Last N layers (0 = all)")
        c["multi_scale_min_weight"] = setting_slider(0.0, 1.0, value=d.multi_scale_min_weight, step=0.05,
                                                     label="Multi-scale weight of the first layer")
        with gr.Row():
            c["use_sigmoid_threshold"] = gr.Checkbox(value=False, label="Sigmoid (probabilistic) decision")
            c["sigmoid_steepness"] = setting_slider(0.5, 50, value=d.sigmoid_steepness, step=0.5, label="Steepness")
        c["preserve_isolated_tokens"] = gr.Checkbox(value=True, label="Never prune single-candidate steps")


def _curve_group(c: dict[str, Any], d: TempoSettings, limits: Limits) -> None:
    """Dynamic threshold (Bezier / ReLU)."""
    with gr.Accordion("Dynamic threshold (Bezier / ReLU)", open=False):
        c["dynamic_threshold"] = gr.Checkbox(value=False, label="Threshold follows a curve over the run")
        c["final_threshold"] = setting_slider(0.0, 0.5, value=d.final_threshold, step=0.005, label="Final threshold")
        c["dynamic_threshold_form"] = gr.Radio(list(CURVE_FORMS), value=d.dynamic_threshold_form,
                                               label="Curve form (seed_scaled: threshold x curve, from 0)")
        with gr.Row():
            c["bezier_p1"] = setting_slider(0.0, 1.0, value=d.bezier_p1, step=0.05, label="Bezier p1")
            c["bezier_p2"] = setting_slider(0.0, 1.0, value=d.bezier_p2, step=0.05, label="Bezier p2")
        with gr.Row():
            c["use_relu"] = gr.Checkbox(value=False, label="ReLU instead of Bezier")
            c["relu_activation_point"] = setting_slider(0.0, 0.95, value=d.relu_activation_point, step=0.05,
                                                   label="ReLU starts at")


def _parallel_group(c: dict[str, Any], d: TempoSettings, limits: Limits) -> None:
    """Parallel sets, cache and prompt."""
    with gr.Accordion("Parallel sets, cache and prompt", open=False):
        c["max_parallel_tokens"] = setting_slider(1, limits.max_parallel_tokens, value=d.max_parallel_tokens,
                                             step=1, label="Max parallel tokens per step")
        c["allow_intraset_token_visibility"] = gr.Checkbox(value=False, label="Siblings see each other")
        c["use_custom_rope"] = gr.Checkbox(value=True, label="Siblings share one position (off: consecutive "
                                                             "positions, a baseline)")
        c["disable_kv_cache"] = gr.Checkbox(value=False, label="Disable KV cache (recompute every step)")
        c["min_steps"] = setting_slider(0, limits.max_tokens, value=0, step=1, label="Min steps before EOS")
        c["temperature"] = setting_slider(0.05, 3.0, value=d.temperature, step=0.05, label="Temperature")
        c["enable_thinking"] = gr.Checkbox(value=False, label="Thinking system prompt (Cogito)")
        c["raw_prompt"] = gr.Checkbox(value=False, label="Raw prompt (no chat template)")
        c["show_token_ids"] = gr.Checkbox(value=False, label="Show token ids in the text")


def _mcts_group(c: dict[str, Any], d: TempoSettings, limits: Limits) -> None:
    """MCTS and sampling."""
    with gr.Accordion("MCTS and sampling", open=False):
        with gr.Row():
            c["mcts_simulations"] = setting_slider(1, limits.mcts_simulations, value=d.mcts_simulations, step=1,
                                                   label="MCTS simulations")
            c["mcts_depth"] = setting_slider(1, limits.mcts_depth, value=d.mcts_depth, step=1,
                                        label="MCTS depth")
        c["mcts_c_puct"] = setting_slider(0.1, 10.0, value=d.mcts_c_puct, step=0.1, label="MCTS c_puct")
        c["do_sample"] = gr.Checkbox(value=False, label="Sample (greedy mode only)")
        with gr.Row():
            c["top_p"] = setting_slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
            c["top_k"] = gr.Number(value=0, precision=0, label="Top-k (0 = off)")
        c["seed"] = gr.Number(value=d.seed, precision=0, label="Seed")


def _research_group(c: dict[str, Any], d: TempoSettings, limits: Limits) -> None:
    """Research options."""
    with gr.Accordion("Research options", open=False):
        c["faithfulness"] = gr.Checkbox(value=False, label="Measure faithfulness after the run (Research tab)")
        c["commitment"] = gr.Checkbox(value=False, label="Commitment strip (logit lens): where each step settles, "
                                                         "layer by layer (under the tree)")
        c["faithfulness_paths"] = setting_slider(1, limits.faithfulness_paths, value=d.faithfulness_paths, step=1,
                                            label="Explicit paths per step (most probable)")
