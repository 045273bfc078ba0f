"""The fake OpenAI-compatible upstream of the tests, as a process of its own for benchmarks.

    python -m bench.upstream PORT
"""
from __future__ import annotations

import sys

import uvicorn

from tests.fake_upstream import FakeUpstream


def main() -> None:
    fake = FakeUpstream()
    fake.received = _Discard()  # a benchmark sends many requests: keep no record
    uvicorn.run(fake.app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                lifespan="off", access_log=False)


class _Discard(list):
    def append(self, item: object) -> None:
        pass


if __name__ == "__main__":
    main()
