"""A master of a Redis Cluster killed (kill -9) while an answer streams from it: how long
until the watching client hears (its first event after the kill), until a replica serves
the slot, and until the conversation takes a new message. One app process, SQLite, a
cluster of 3 masters with a replica each, cluster-node-timeout 1 s (tests/rediscluster.py).

    .venv/bin/python -m bench.cluster_failover [--rounds 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import median
from tests.conftest import Api, base_config, cluster_broker
from tests.fake_upstream import FakeUpstream
from tests.rediscluster import RedisClusterNodes
from tests.servers import ServerProcess, write_config
from tests.wsclient import Socket


def one_round(workdir: Path, upstream: FakeUpstream) -> dict[str, float | str]:
    cluster = RedisClusterNodes(workdir / "cluster")
    config = write_config(workdir / "config.yaml", base_config(workdir, "sqlite", upstream, cluster_broker(cluster)))
    server = ServerProcess(config, workdir).start()
    try:
        api = Api(server.url)
        headers = api.new_user()
        cid = api.create_conversation(headers, model="fake-model")["conversation_id"]
        tag = f"{{conv:{cid}}}"
        master = cluster.master_of(tag)
        with Socket(server.url, cid, headers) as socket:
            socket.recv()
            socket.send({"type": "message", "content": "#fake tokens=2000 delay_ms=10"})
            socket.recv_until("message")
            killed = time.monotonic()
            cluster.kill(master)
            first = socket.recv(timeout=30)
            heard = time.monotonic() - killed
        cluster.wait_failover(tag, master)
        promoted = time.monotonic() - killed
        while api.http.post(f"/api/chat/{cid}", json={"message": "#fake tokens=2"}, headers=headers).status_code != 200:
            time.sleep(0.05)
        usable = time.monotonic() - killed
        return {"heard": heard, "first": f"{first['event']}/{first.get('code', '')}", "promoted": promoted,
                "usable": usable}
    finally:
        server.stop()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    upstream = FakeUpstream().start()
    try:
        rounds = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                rounds.append(one_round(Path(tmp), upstream))
    finally:
        upstream.stop()
    print(f"A master killed mid-answer (medians of {args.rounds}; cluster-node-timeout 1 s):")
    print(f"  first event to the client after the kill: {median([float(r['heard']) for r in rounds]) * 1000:.0f} ms "
          f"({', '.join(sorted({str(r['first']) for r in rounds}))})")
    print(f"  a replica serves the slot:               {median([float(r['promoted']) for r in rounds]):.2f} s")
    print(f"  the conversation takes a new message:    {median([float(r['usable']) for r in rounds]):.2f} s")


if __name__ == "__main__":
    main()
