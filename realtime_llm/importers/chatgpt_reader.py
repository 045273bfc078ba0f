"""The process that reads a ChatGPT export (chatgpt_process.py starts it; chatgpt.py reads):

    python -m realtime_llm.importers.chatgpt_reader '[MODEL, TITLE_CHARS, UNZIPPED_BYTES,
        CONVERSATIONS, MEMORY_BYTES, CPU_SECONDS]' < export > records

The export is read whole once to check it, then again to write each conversation as a
JSON record after its length (LENGTH_BYTES, big-endian): [title, created_time,
active_leaf_id, [[message_id, parent_id, role, content, created_time], ...]]. Exit status
0 with the records; 2 malformed, 3 too large (a line on standard error says what);
anything else: it could not be read. Imports little, to start fast.
"""
from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import zipfile
import zlib

import orjson

from realtime_llm.importers.chatgpt import ExportTooLarge, MalformedExport, Reading, conversations_in

CHUNK_BYTES = 262_144
MALFORMED, TOO_LARGE = 2, 3
LENGTH_BYTES = 8


def main() -> None:
    model, title_chars, unzipped, conversations, memory, cpu = orjson.loads(sys.argv[1])
    # Bounded before the export is read (set here, not by the server: a preexec hook is
    # unsafe in a process with threads).
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    reading = Reading(model, title_chars, unzipped, conversations)
    out = sys.stdout.buffer
    with tempfile.TemporaryFile() as spool:  # seekable, as a .zip must be; read twice
        shutil.copyfileobj(sys.stdin.buffer, spool, CHUNK_BYTES)
        try:
            for _ in conversations_in(spool, reading):
                pass  # all checked first: a malformed export hands back nothing
            for c in conversations_in(spool, reading):
                record = orjson.dumps([c.title, c.created_time, c.active_leaf_id, [
                    [m.message_id, m.parent_id, m.role, m.content, m.created_time] for m in c.messages]])
                out.write(len(record).to_bytes(LENGTH_BYTES, "big") + record)
            out.flush()
        except (ExportTooLarge, MemoryError) as exc:
            _fail(TOO_LARGE, str(exc) or "this export is too large to read")
        except MalformedExport as exc:
            _fail(MALFORMED, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            sys.exit(1)  # the server went away
        except UnicodeDecodeError:
            _fail(MALFORMED, "the export is not UTF-8 throughout")
        except Exception as exc:
            if type(exc).__module__.startswith("ijson"):
                _fail(MALFORMED, f"not valid JSON: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            if isinstance(exc, (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
                                RuntimeError, NotImplementedError)):
                _fail(MALFORMED, f"not a readable .zip: {exc}")
            raise


def _fail(status: int, message: str) -> None:
    sys.stderr.write(message.replace("\n", " ")[:1000] + "\n")
    sys.exit(status)




if __name__ == "__main__":
    main()
