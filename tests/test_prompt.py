"""What the model is sent: the system prompt and the newest history of the branch that
fits the context budget, the message answered always; a regenerate of an answer is sent
the very prompt the answer was."""
from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.conftest import Api, base_config
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerProcess, write_config
from tests.test_chat import assert_complete, chat_events, history, new_chat

BUDGET_TOKENS = 60  # 240 characters, less the system prompt's
SYSTEM = "Be brief."


@pytest.fixture(scope="module")
def tight(database: str, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("tight")
    config = base_config(workdir, database, upstream)
    config["llm"].update(context_budget_tokens=BUDGET_TOKENS, system_prompt=SYSTEM)
    server = ServerProcess(write_config(workdir / "config.yaml", config), workdir).start()
    client = Api(server.url)
    yield client
    client.http.close()
    server.stop()


def sent(upstream: FakeUpstream, message: str, nth: int = 1) -> list[dict[str, Any]]:
    """The messages of the nth-last request whose last message is `message`."""
    found = [r for r in upstream.received if (r.body.get("messages") or [{}])[-1].get("content") == message]
    assert len(found) >= nth, f"the upstream never received {message!r} {nth} time(s)"
    return list(found[-nth].body["messages"])


def regenerated(api: Api, headers: dict[str, str], cid: int) -> None:
    response = api.http.post(f"/api/chat/{cid}/regenerate", headers=headers)
    assert response.status_code == 200, response.text


def test_the_newest_history_that_fits_is_sent_and_a_regenerate_sends_it_again(tight: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(tight)
    turns = [f"#fake tokens=1\n{i} " + "x" * 90 for i in range(4)]
    for turn in turns:
        assert_complete(chat_events(tight, headers, cid, turn), cid)
    first = sent(upstream, turns[-1])
    regenerated(tight, headers, cid)
    assert sent(upstream, turns[-1]) == first  # the regenerate's
    assert first[0] == {"role": "system", "content": SYSTEM}
    history_sent = first[1:]
    assert sum(len(m["content"]) for m in history_sent) <= BUDGET_TOKENS * 4 - len(SYSTEM)
    assert 1 < len(history_sent) < 2 * len(turns)  # trimmed, not only the last
    saved = [{"role": m["role"], "content": m["content"]} for m in history(tight, headers, cid)]
    assert history_sent == saved[-len(history_sent) - 1:-1]  # the newest, in order (the last: the new answer)


def test_a_message_over_the_budget_is_sent_alone(tight: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(tight)
    assert_complete(chat_events(tight, headers, cid, "#fake tokens=1\nshort"), cid)
    long = "#fake tokens=1\n" + "y" * (BUDGET_TOKENS * 4)
    assert_complete(chat_events(tight, headers, cid, long), cid)
    assert sent(upstream, long) == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": long}]
    regenerated(tight, headers, cid)
    assert sent(upstream, long) == sent(upstream, long, nth=2)


def test_the_first_message_of_a_conversation(tight: Api, upstream: FakeUpstream) -> None:
    headers, cid = new_chat(tight)
    first = "#fake tokens=2\nhello"
    assert assert_complete(chat_events(tight, headers, cid, first), cid) == "t0 t1 "
    assert sent(upstream, first) == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": first}]
    assert [(m["role"], m["message_id"], m["parent_id"]) for m in history(tight, headers, cid)] == [
        ("user", 1, None), ("assistant", 2, 1)]
