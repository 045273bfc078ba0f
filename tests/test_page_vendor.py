"""The page's vendored libraries (static/vendor/): the versions refresh.sh pins are the
ones on disk and in VERSIONS, each with its licence, and the server serves them as
JavaScript (module scripts are refused under any other type, nosniff)."""
from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.servers import ServerProcess
from tests.test_page import page_server  # noqa: F401

VENDOR = Path(__file__).resolve().parent.parent / "static" / "vendor"
# file, refresh.sh's variable, the version as the file's own banner says it, its licence
FILES = [("marked.esm.js", "MARKED", r"marked v([\d.]+)", "LICENSE.marked"),
         ("purify.es.mjs", "DOMPURIFY", r"DOMPurify ([\d.]+)", "LICENSE.dompurify"),
         ("highlight.min.js", "HIGHLIGHT", r"Highlight\.js v([\d.]+)", "LICENSE.highlight.js")]


def test_pinned_versions_are_the_files_on_disk() -> None:
    script = (VENDOR / "refresh.sh").read_text()
    listed = (VENDOR / "VERSIONS").read_text()
    for name, variable, banner, licence in FILES:
        pinned = re.search(rf"^{variable}=([\d.]+)$", script, re.M)
        assert pinned, variable
        found = re.search(banner, (VENDOR / name).read_text()[:400])
        assert found and found.group(1) == pinned.group(1), (name, found, pinned.group(1))
        assert f"{pinned.group(1)} " in listed and name in listed
        assert (VENDOR / licence).stat().st_size > 500
        assert "sourceMappingURL" not in (VENDOR / name).read_text()[-300:]  # no map to 404 on


def test_served_as_javascript(page_server: ServerProcess) -> None:  # noqa: F811
    for name, *_ in FILES:
        response = httpx.get(f"{page_server.url}/static/vendor/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/javascript"), name
        assert response.content == (VENDOR / name).read_bytes()
