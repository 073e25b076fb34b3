"""The process that runs WeasyPrint for the renderer (resources/renderer.py).

Kept apart and light (WeasyPrint only, no Dagster) so a worker starts fast, and so a render
that runs away can be stopped by ending its process: WeasyPrint has no timeout of its own.

Nothing is fetched but the package's own stylesheet: the URL fetcher refuses every other URL
(every scheme, `file:` included) and follows no redirect, and it is given to both the HTML and
the CSS. Templates are autoescaped (renderer.py), so a client's name is text, never markup.
"""

from __future__ import annotations

import struct
import sys

from weasyprint import CSS, HTML
from weasyprint.urls import FatalURLFetchingError, URLFetcher, URLFetcherResponse

from billing_pipeline.resources.documents_assets import ASSETS

ASSET_SCHEME = "billing-assets"
STYLESHEET_URL = f"{ASSET_SCHEME}:/static/documents.css"
# The only URLs a document may load, each mapped to a file shipped in the package.
PACKAGE_ASSETS = {STYLESHEET_URL: (ASSETS / "static" / "documents.css", "text/css")}


class PackageAssetFetcher(URLFetcher):
    """Serves the package's own assets and refuses everything else, loudly: a refused URL
    stops the render (an unexpected fetch means markup got in where it should not)."""

    def __init__(self) -> None:
        super().__init__(allowed_protocols=(), allow_redirects=False, fail_on_errors=True)

    def fetch(self, url: str, headers: object = None) -> URLFetcherResponse:
        asset = PACKAGE_ASSETS.get(url)
        if asset is None:
            # The URL is not quoted: it could carry what a client typed.
            raise FatalURLFetchingError("a document asked for a URL that is not a package asset")
        path, content_type = asset
        return URLFetcherResponse(
            url, body=path.read_bytes(), headers={"Content-Type": content_type}
        )


_stylesheet: list[CSS] = []


def stylesheet() -> CSS:
    """The one stylesheet, parsed once per process."""
    if not _stylesheet:
        _stylesheet.append(CSS(url=STYLESHEET_URL, url_fetcher=PackageAssetFetcher()))
    return _stylesheet[0]


def html_to_pdf(html: str) -> bytes:
    """The PDF of a document's HTML (the renderer's templates' output)."""
    document = HTML(string=html, base_url=f"{ASSET_SCHEME}:/", url_fetcher=PackageAssetFetcher())
    pdf = document.write_pdf(stylesheets=[stylesheet()])
    if pdf is None:  # write_pdf returns bytes when given no target
        raise RuntimeError("WeasyPrint returned no PDF")
    return pdf


def warm_up() -> None:
    """Load fonts and the stylesheet before the first document is timed."""
    html_to_pdf("<p>.</p>")


def _read_exact(stream: object, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))  # type: ignore[attr-defined]  # a binary stdin
        if not chunk:
            raise EOFError
        data += chunk
    return data


def serve() -> None:
    """Render until stdin closes: a request is a 4-byte big-endian length and the HTML (UTF-8);
    an answer is `P` or `E`, a length and the PDF (or the exception's type only: its message
    could quote a client)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    warm_up()
    stdout.write(b"R")
    stdout.flush()
    while True:
        try:
            (size,) = struct.unpack(">I", _read_exact(stdin, 4))
            html = _read_exact(stdin, size).decode()
        except EOFError:
            return
        try:
            status, payload = b"P", html_to_pdf(html)
        except Exception as exc:  # reported to the parent by type, never by message
            status, payload = b"E", type(exc).__name__.encode()
        stdout.write(status + struct.pack(">I", len(payload)) + payload)
        stdout.flush()


if __name__ == "__main__":
    serve()
