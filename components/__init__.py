"""TEMPO Explorer's page, in three layers: figures (pure) -> server (plumbing) -> tabs (Gradio)."""
