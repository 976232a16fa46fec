"""The live web dashboard of `batchrelay serve`, at `/`: batches, a batch, providers.

Plain HTML, CSS and JS shipped in `static/` (no CDN, no build step); the pages poll JSON endpoints
under `/dashboard/api/` every 2 s. Its requests skip the API's key check (serve/app.py RequireKey):
they carry a session cookie instead, set by a login with one of the same client keys (auth.py).
"""

from __future__ import annotations

PREFIX = "/dashboard/"


def is_dashboard(path: str) -> bool:
    """The paths the dashboard answers itself (with its cookie), not the API's key check."""
    return path == "/" or path.startswith(PREFIX)
