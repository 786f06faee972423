"""The page's tabs: each lays out its components and registers its own listeners (app.py opens them)."""
