"""TEMPO from the command line, figures included: `python cli.py --prompt "..." --output-dir out --save-visualization`.

The engine's own command (`python -m tempo_core`, the same flags) draws nothing; this one passes it the figure
writer, so the engine never imports the page's code.
"""

from components.figures.report import save_figures
from tempo_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main(save_figures=save_figures))
