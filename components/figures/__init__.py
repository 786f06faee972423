"""Pure functions from a recorded trace to figures (Plotly dicts and Figures), HTML and Markdown. No Gradio."""
