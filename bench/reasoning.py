"""Reasoning models: the time added to the first thinking token (one stream, against the
fake upstream called directly), and what an answer with 2,000 tokens of thinking and 500
of answer costs Redis in bytes, against the answer's own size (thinking included).

    .venv/bin/python -m bench.reasoning [--rounds 5]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import relay_overhead
from bench.common import UpstreamProcess, median, percentile
from bench.ws_streams import redis_cost
from tests.backends import PrivateRedis

THOUGHTFUL = "#fake think=2000 tokens=500"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    [(_, n, direct, relay)] = relay_overhead.run([1], args.rounds, first_thought=True)
    print(f"SSE time to the first thinking token, 1 stream, {n} answers (ms):")
    print(f"  direct p50 {median(direct) * 1000:.2f}, p99 {percentile(direct, 0.99) * 1000:.2f};"
          f" through realtime-llm p50 {median(relay) * 1000:.2f}, p99 {percentile(relay, 0.99) * 1000:.2f};"
          f" added p50 {(median(relay) - median(direct)) * 1000:.2f}")
    upstream, private = UpstreamProcess(), PrivateRedis()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            calls, written, size, events = redis_cost(Path(tmp), upstream, private, THOUGHTFUL)
    finally:
        upstream.stop()
        private.stop()
    print(f"Redis cost of an answer with 2,000 tokens of thinking and 500 of answer ({size} bytes):")
    print(f"  commands: {calls}   bytes written to Redis: {written} ({written / size:.2f} x the answer; target <= 3)")


if __name__ == "__main__":
    main()
