"""Checks of self-contained HTML reports: every <img> a decodable PNG, and (where installed) how a
headless Chromium renders the page."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import pathlib
import shutil
import subprocess
import tempfile

from PIL import Image

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROBE_SCRIPT = """<script>
window.addEventListener('load', () => {
  const found = [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                               height: i.naturalHeight, shown: i.getBoundingClientRect().width}));
  document.body.setAttribute('data-images', JSON.stringify(found));
});
</script>"""


class _Images(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.images.append(dict(attrs))


def images_in_html(text: str) -> list[tuple[str, Image.Image]]:
    """(alt, decoded image) of every <img>; each must be an inline base64 PNG that PIL can fully decode."""
    parser = _Images()
    parser.feed(text)
    out = []
    for attrs in parser.images:
        src = attrs.get("src", "")
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), f"image {attrs.get('alt')!r} is not an inline PNG: {src[:40]!r}"
        data = base64.b64decode(src[len(prefix):], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"image {attrs.get('alt')!r} is not a PNG"
        Image.open(io.BytesIO(data)).verify()
        image = Image.open(io.BytesIO(data))
        image.load()
        out.append((attrs.get("alt", ""), image))
    return out


def chromium() -> str | None:
    """The path of a Chromium-family browser, or None."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


def render_images(page: pathlib.Path, browser: str, timeout: float = 120) -> list[dict]:
    """Loads ``page`` in headless Chromium and returns, per <img>, whether it loaded and its sizes."""
    text = page.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        probe = pathlib.Path(tmp) / "page.html"
        probe.write_text(text.replace("</body>", PROBE_SCRIPT + "</body>"))
        result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                                 f"--user-data-dir={tmp}/profile", "--dump-dom", probe.as_uri()],
                                capture_output=True, text=True, timeout=timeout)
    marker = 'data-images="'
    start = result.stdout.find(marker)
    assert start >= 0, f"chromium rendered no result (rc {result.returncode}): {result.stderr[-2000:]}"
    end = result.stdout.find('"', start + len(marker))
    return json.loads(html.unescape(result.stdout[start + len(marker):end]))
