"""Upload of a 10 MiB file (issue 18): time, and how far the server's resident memory
peaks above where it was, against the target of at most twice the file.

    .venv/bin/python -m bench.upload [--mib 10] [--rounds 5]

For SQLite and PostgreSQL: one server process; before each upload its peak RSS is reset
(/proc/PID/clear_refs) and its RSS read; after, its peak (VmHWM) is read. The baseline in
the same run is a 1 KiB upload of the same kind. Times are medians of the rounds; the
growth is the worst round's (the first, usually: later ones reuse what the allocator kept).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import httpx

from bench.common import UpstreamProcess, make_users, median, start_server
from tests.backends import create_postgres_database, drop_postgres_database


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def one_upload(http: httpx.Client, headers: dict[str, str], pid: int, size: int) -> tuple[float, float]:
    """(seconds, peak RSS growth in MiB) of one upload of a PNG-headed file of `size` bytes."""
    data = b"\x89PNG\r\n\x1a\n" + b"\x01" * (size - 8)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from now
    before = status_kib(pid, "VmRSS")
    start = time.perf_counter()
    response = http.post("/api/files", headers=headers, files={"file": ("big.png", data, "image/png")})
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, (status_kib(pid, "VmHWM") - before) / 1024


class Row(NamedTuple):
    database: str
    seconds: float
    growth_mib: float
    baseline_seconds: float
    baseline_growth_mib: float


def measure(mib: int, rounds: int) -> list[Row]:
    results = []
    upstream = UpstreamProcess()
    postgres = create_postgres_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for database in ("sqlite", "postgresql"):
                sections = {"database": {"url": postgres}} if database == "postgresql" else {}
                server = start_server(Path(tmp), upstream, **sections)
                try:
                    [(headers, _)] = make_users(server.url, 1)
                    assert server.process is not None
                    pid = server.process.pid
                    with httpx.Client(base_url=server.url, timeout=120) as http:
                        one_upload(http, headers, pid, 1024)  # warm
                        small = [one_upload(http, headers, pid, 1024) for _ in range(rounds)]
                        big = [one_upload(http, headers, pid, mib * 1024 * 1024) for _ in range(rounds)]
                finally:
                    server.stop()
                results.append(Row(database, median([s for s, _ in big]), max(g for _, g in big),
                                   median([s for s, _ in small]), max(g for _, g in small)))
    finally:
        upstream.stop()
        drop_postgres_database(postgres)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"Upload of a {args.mib} MiB file, {args.rounds} rounds: median time, worst peak RSS growth"
          " (baseline: a 1 KiB file)")
    for row in measure(args.mib, args.rounds):
        print(f"  {row.database:<10} {row.seconds * 1000:7.0f} ms  peak RSS +{row.growth_mib:.1f} MiB"
              f" = {row.growth_mib / args.mib:.2f}x the file (target <= 2x)"
              f"  (1 KiB: {row.baseline_seconds * 1000:.1f} ms, +{row.baseline_growth_mib:.1f} MiB)")


if __name__ == "__main__":
    main()
