"""Where the documents' templates and stylesheet are shipped (package data), for the renderer
and its worker (kept apart so that the renderer does not import WeasyPrint: only the worker
process does)."""

from pathlib import Path

ASSETS = Path(__file__).with_name("documents")
