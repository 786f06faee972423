"""Serving plumbing below the tabs: the state they share, live frames, sessions, the JSON API, uploads."""
