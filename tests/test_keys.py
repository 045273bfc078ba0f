"""The server secret file and API-key sealing."""
from __future__ import annotations

import threading
from pathlib import Path

from realtime_llm.keys import APIKeyBox, load_or_create_secret, mask_api_key


def test_seal_round_trip_and_tamper() -> None:
    """Sealed keys open with the same secret, differ every time, and fail closed when altered."""
    box = APIKeyBox("a" * 40)
    first, second = box.seal("sk-abc"), box.seal("sk-abc")
    assert first != second and "sk-abc" not in first
    assert box.open(first) == "sk-abc"
    tampered = first[:-2] + ("A" if first[-2] != "A" else "B") + first[-1]
    assert box.open(tampered) == ""
    assert APIKeyBox("b" * 40).open(first) == ""
    assert box.seal("") == "" and box.open("") == ""


def test_mask() -> None:
    assert mask_api_key("sk-0123456789abcdef7f3a") == "sk-…7f3a"
    assert mask_api_key("short") == "…"
    assert mask_api_key("") == ""


def test_secret_created_once_even_when_racing(tmp_path: Path) -> None:
    """Workers starting together all end up with the one secret written first."""
    path = tmp_path / "sub" / "jwt.secret"
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(load_or_create_secret(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and len(seen[0]) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert list(path.parent.iterdir()) == [path]  # no temporary files left behind
