"""Check every internal link of a built HTML site: target file and anchor must exist.

Usage: ``python docs/_ext/check_links.py BUILD_DIR`` after ``sphinx -b html docs
BUILD_DIR``; prints each broken link and exits 1 if there is one. External links
(http, https, mailto) are not followed: this machine has no network.
"""
from __future__ import annotations

import html.parser
import os
import sys
import urllib.parse


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        values = dict(attrs)
        for key in ("id", "name"):
            if values.get(key):
                self.ids.add(values[key])
        target = values.get("href") if tag in ("a", "link") else values.get("src")
        if target:
            self.links.append(target)


def _parse(path: str) -> _Page:
    page = _Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    return page


def broken_links(root: str) -> list[str]:
    """``'page: link'`` for every internal link whose file or anchor is missing."""
    pages: dict[str, _Page] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".html"):
                path = os.path.normpath(os.path.join(folder, name))
                pages[path] = _parse(path)
    problems = []
    for path, page in sorted(pages.items()):
        for link in page.links:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme or link.startswith("//"):
                continue
            target = os.path.normpath(os.path.join(os.path.dirname(path),
                                                   urllib.parse.unquote(parts.path))) \
                if parts.path else path
            if not os.path.exists(target):
                problems.append(f"{os.path.relpath(path, root)}: {link} (no such file)")
            elif parts.fragment and target in pages \
                    and urllib.parse.unquote(parts.fragment) not in pages[target].ids:
                problems.append(f"{os.path.relpath(path, root)}: {link} (no such anchor)")
    return problems


def main(argv: list[str]) -> int:
    problems = broken_links(argv[1])
    print("\n".join(problems) if problems else f"{argv[1]}: every internal link resolves")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
