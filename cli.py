"""TEMPO from the command line, figures included: `python cli.py --prompt "..." --output-dir out --save-visualization`,
and the study with its figure: `python cli.py study --quick`.

The engine's own command (`python -m tempo_core`, the same flags) draws nothing; this one passes it the figure
writer, so the engine never imports the page's code.
"""

from components.figures.report import save_figures
from components.figures.study import write_study_html
from tempo_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main(save_figures=save_figures, write_study_figure=write_study_html))
