"""A fake Anthropic Messages API on 127.0.0.1 that makes Claude Code run Bash tool uses.

Standard library only: an :class:`http.server.ThreadingHTTPServer` in a thread. Every
``POST /v1/messages`` is answered from the conversation it carries, so the server keeps
no conversation state and one instance serves any number of sessions and resumes:

- the prompt asks for its tool uses with the words ``tool uses: N`` (no such words: 0);
- while fewer than ``N`` tool results have come back since that prompt, the answer is a
  ``Bash`` tool use running :attr:`FakeMessagesAPI.command`, with a fresh ``toolu_`` id;
- then an ``end_turn`` text.

A request without tools (a title or a summary Claude Code may ask for on the side) gets
a short text. Answers stream as Server-Sent Events when the request says ``stream``
(``message_start``, ``content_block_start`` / ``content_block_delta`` /
``content_block_stop``, ``message_delta`` with the stop reason, ``message_stop``), else
as one JSON message. ``count_tokens`` gets a count; any other path a 404 in the API's
error shape; ``HEAD`` and ``GET`` a 200, as a reachability probe expects.

Sockets get ``TCP_NODELAY``: without it, Nagle's algorithm and delayed ACKs put ~40 ms
stalls between a response's header and body, which would swamp what the benchmark
measures. Each tool use's turnaround (the tool_use answer sent, to the request bringing
its result) is recorded: that is the time Claude Code spent running the tool and its
hooks, as the model's side sees it.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_TOOL_USES = re.compile(r"tool uses: (\d+)")
MODEL = "claude-fake-1"


class FakeMessagesAPI:
    """The server; use as a context manager. :attr:`url` goes to ``ANTHROPIC_BASE_URL``."""

    def __init__(self, command: str = "true") -> None:
        self.command = command
        self.requests: list[tuple[float, str, str]] = []  # (monotonic s, method, path)
        self.turnarounds_s: dict[str, float] = {}  # tool_use id -> answer sent to result in
        self._sent_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.api = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeMessagesAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def tool_uses_answered(self) -> int:
        with self._lock:
            return len(self._sent_at)

    # -- the script -------------------------------------------------------------------

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The assistant message for one ``/v1/messages`` request body."""
        received = time.monotonic()
        results, asked = _progress(request.get("messages", []))
        with self._lock:
            for tool_use_id in results:
                sent = self._sent_at.get(tool_use_id)
                if sent is not None and tool_use_id not in self.turnarounds_s:
                    self.turnarounds_s[tool_use_id] = received - sent
        if not any(t.get("name") == "Bash" for t in request.get("tools", [])):
            return _message([{"type": "text", "text": "Fake title"}], "end_turn")
        if len(results) < asked:
            # Unique across servers: a resumed conversation already holds earlier ids, and
            # Claude Code drops a tool use whose id it has seen (as "[Tool use interrupted]").
            tool_use_id = f"toolu_{uuid.uuid4().hex}"
            block = {
                "type": "tool_use",
                "id": tool_use_id,
                "name": "Bash",
                "input": {"command": self.command, "description": "a step"},
            }
            return _message([block], "tool_use")
        return _message([{"type": "text", "text": f"Done: {len(results)} tool uses."}], "end_turn")

    def sent(self, message: dict[str, Any]) -> None:
        """Note when a tool_use answer has been written out completely."""
        now = time.monotonic()
        with self._lock:
            for block in message["content"]:
                if block["type"] == "tool_use":
                    self._sent_at[block["id"]] = now


def _progress(messages: list[dict[str, Any]]) -> tuple[list[str], int]:
    """The tool_use ids answered since the last prompt, and the tool uses it asks for."""
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        answered = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
        if answered:
            results.extend(answered)
            continue
        text = " ".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        found = _TOOL_USES.search(text)
        return results, int(found.group(1)) if found else 0
    return results, 0


def _message(content: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    return {
        "id": f"msg_{time.monotonic_ns():x}",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def sse_events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The streamed form of one message, as (event, data) pairs."""
    start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 10}}
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            opening = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": opening,
            },
        )
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: FakeMessagesAPI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test output stays clean; requests are recorded instead

    def do_HEAD(self) -> None:
        self._record()
        self._reply(200, b"", "application/json", head=True)

    def do_GET(self) -> None:
        self._record()
        self._reply(200, b"{}", "application/json")

    def do_POST(self) -> None:
        self._record()
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = {}
        path = self.path.split("?", 1)[0]
        if path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": 10})
        elif path == "/v1/messages":
            message = self.server.api.answer(body)
            if body.get("stream"):
                chunks = [
                    f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
                    for event, data in sse_events(message)
                ]
                self._reply(200, b"".join(chunks), "text/event-stream")
            else:
                self._json(200, message)
            self.server.api.sent(message)
        else:
            error = {"type": "not_found_error", "message": f"no {path} here"}
            self._json(404, {"type": "error", "error": error})

    def _record(self) -> None:
        with self.server.api._lock:
            self.server.api.requests.append((time.monotonic(), self.command, self.path))

    def _json(self, status: int, data: object) -> None:
        self._reply(status, json.dumps(data).encode(), "application/json")

    def _reply(self, status: int, body: bytes, content_type: str, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", f"req_{time.monotonic_ns():x}")
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.wfile.flush()
