"""HTML read without docling, for pages nested too deeply for it: their depth from the tags, their text."""

from __future__ import annotations

import re

HTML_MAX_DEPTH = 256  # elements inside elements; docling converted 300 in 0.5 s here and failed at 600
_HTML_TAG = re.compile(rb"<(/?)([a-zA-Z][a-zA-Z0-9]*)")
# Void elements, and those HTML closes implicitly (often written without an end tag): no depth of their own.
_HTML_FLAT = frozenset(
    b"area base br col embed hr img input link meta source track wbr p li dt dd tr td th option".split()
)


def html_depth(data: bytes) -> int:
    """How deep elements nest, from the tags alone (a regular expression over the bytes: fast, no tree)."""
    depth = deepest = 0
    for match in _HTML_TAG.finditer(data):
        if match.group(2).lower() in _HTML_FLAT:
            continue
        if match.group(1):
            depth = max(0, depth - 1)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def html_text(data: bytes) -> str:
    """The text of an HTML page, a line per block, by a streaming parser: no depth limit, no recursion."""
    from html.parser import HTMLParser

    class _Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self._skipped = 0  # inside <script> or <style>

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag in ("script", "style"):
                self._skipped += 1
            if tag in _HTML_BLOCKS:
                self.parts.append("\n")

        def handle_endtag(self, tag: str) -> None:
            if tag in ("script", "style") and self._skipped:
                self._skipped -= 1
            if tag in _HTML_BLOCKS:
                self.parts.append("\n")

        def handle_data(self, text: str) -> None:
            if not self._skipped:
                self.parts.append(text)

    parser = _Text()
    parser.feed(data.decode("utf-8", "replace"))
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line) + "\n"


_HTML_BLOCKS = frozenset(
    [
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "tr",
        "table",
        "section",
        "article",
        "header",
        "footer",
        "pre",
        "blockquote",
        "dt",
        "dd",
    ]
)
