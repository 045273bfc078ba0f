"""Fan-out at scale (issue 21, figure 3): 10,000 sockets over 2 processes sharing Redis
watching one answer (delivery delay p99, target <= 100 ms; the servers' memory per
socket, target <= 64 KiB), and 1,000 conversations answering at once, each watched by 5
sockets (delivery delay p99, reported).

    .venv/bin/python -m bench.fanout_scale [--sockets 10000] [--delay-ms 200] [--conversations 1000] [--repeat 3]

The sockets are bench.leanws's Watchers, spread over the two processes; the first socket
of each conversation asks for an answer of 40 tokens, each stamped with its emission time
by the fake upstream: 50 ms apart for the 1,000 conversations, and `--delay-ms` (200)
apart for the one answer to 10,000 sockets. (At 50 ms that is 200,000 frames a second
for the servers to write and the client to read, together, on this 2-core machine: more
than the three can do, and the delay then grows with the answer, 260 ms at p99 here.) Delay = receipt minus emission, over every token at
every socket. Memory: the two servers' RSS once every socket is ready, less their RSS
before the sockets connected, per socket, in the first round only (later rounds reuse
what the first left allocated). The baselines in the same run are one answer watched by
one socket and, as in bench.fanout, the bare fan-out to as many sockets.
"""
from __future__ import annotations

import argparse

import uvloop

from bench.common import make_users, median, redis_pair
from bench.fanout import BareFanout, alternately, answers, p99_ms

TOKENS = 40  # of each answer


def measure(sockets: int, delay_ms: int, conversations: int, repeat: int) -> dict[str, float]:
    rounds: dict[str, list[float]] = {"p99_one_ms": [], "p99_ms": [], "p99_bare_ms": [], "cpu_ms": [],
                                      "cpu_bare_ms": [], "p99_many_ms": []}
    memory: list[float] = []
    with redis_pair("scale") as (pair, redis_url):
        users = make_users(pair[0].url, max(1, conversations))
        bare = BareFanout(redis_url)
        try:
            for _ in range(repeat):
                rounds["p99_one_ms"].append(p99_ms(uvloop.run(answers(pair, users[:1], 1, delay_ms)).delays))
                ours, floor = alternately(len(rounds["p99_ms"]),
                                          lambda: answers(pair, users[:1], sockets, delay_ms, TOKENS),
                                          lambda: bare.answer(sockets, TOKENS, delay_ms))
                rounds["p99_ms"].append(p99_ms(ours.delays))
                rounds["cpu_ms"].append(ours.cpu_ms)
                rounds["p99_bare_ms"].append(p99_ms(floor.delays))
                rounds["cpu_bare_ms"].append(floor.cpu_ms)
                if not memory:
                    memory.append(ours.kib_per_socket)
                if conversations:
                    rounds["p99_many_ms"].append(p99_ms(uvloop.run(answers(pair, users, 5)).delays))
        finally:
            bare.stop()
    return {"kib_per_socket": memory[0], **{name: median(values) if values else float("nan")
                                            for name, values in rounds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--delay-ms", type=int, default=200)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    r = measure(args.sockets, args.delay_ms, args.conversations, args.repeat)
    print(f"Fan-out over 2 processes + Redis, lean clients; medians of {args.repeat} runs")
    print(f"  one answer to {args.sockets} sockets, tokens {args.delay_ms} ms apart: delivery delay p99 "
          f"{r['p99_ms']:.1f} ms (target <= 100 ms; one socket: {r['p99_one_ms']:.1f} ms); server memory "
          f"{r['kib_per_socket']:.1f} KiB a socket (target <= 64 KiB)")
    print(f"  the bare fan-out (bench.bare_fanout), same sockets and client: p99 {r['p99_bare_ms']:.1f} ms "
          f"({r['p99_ms'] / r['p99_bare_ms']:.2f}x); the two processes' CPU per 1,000 frames received "
          f"{r['cpu_ms']:.1f} ms, bare {r['cpu_bare_ms']:.1f} ms ({r['cpu_ms'] / r['cpu_bare_ms']:.2f}x)")
    print(f"  {args.conversations} conversations answering at once (tokens 50 ms apart), 5 sockets each: "
          f"delivery delay p99 {r['p99_many_ms']:.1f} ms")


if __name__ == "__main__":
    main()
