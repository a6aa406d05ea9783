"""The live status page: what it shows (`status_view`), the history its plots draw
(`ActivityHistory`), and the static page itself (package data under `static/`, served by the
admin API at `/`; plain HTML and JS, no build step, no CDN)."""

from picker.observe.status.history import ActivityHistory
from picker.observe.status.view import StatusSubject, first_page, static_file, status_view

__all__ = ["ActivityHistory", "StatusSubject", "first_page", "static_file", "status_view"]
