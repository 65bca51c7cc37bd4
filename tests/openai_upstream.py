"""A small OpenAI-compatible chat server on 127.0.0.1 for tests: a real HTTP peer, not a mock.

It answers POST /v1/chat/completions with a completion that names the model it was asked for,
as JSON or, with `stream: true`, as server-sent chunks ending in `data: [DONE]`; counts requests
per model so tests can check where traffic went. With `api_key` set it answers 401 to any other
key. The last user message steers it: containing "upstream-fail" it answers 500, "upstream-hang"
it waits 30 s before answering, "upstream-slow" it streams 100 chunks 0.1 s apart and records in
`disconnects` when the reader went away before the end. Answers report token usage (a stream only
with `stream_options.include_usage`). `failing` maps a model to the HTTP status
its requests get instead of an answer (a provider outage, or 429 for a rate limit; 0: the connection
is closed without an answer), with the headers in `failing_headers` (a 429's Retry-After). The model named "judge" answers `judge_reply` (a grader's reply).
A request offering `tools` is answered with a call of the first (arguments `ARGUMENTS`; streamed
in pieces as OpenAI does); `max_completion_tokens` / `max_tokens` below 3 cuts the answer to that
many words with finish_reason "length".
`delays` maps a model to seconds it waits before its answer (a stream: before its first chunk).
A model id "org/name" (a provider's own naming) is answered as "name"; `requests` keeps each POST's
path and headers. `context_chars` maps a model to the most characters of message text it takes: a longer request gets
the 400 OpenAI's API answers (code `context_length_exceeded`, vLLM's wording in the message).
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if urlsplit(self.path).path.rstrip("/") != "/v1/chat/completions":
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        server = self.server
        server.seen_auth.append(self.headers.get("authorization"))
        server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if server.api_key is not None and self.headers.get("authorization") != f"Bearer {server.api_key}":
            self._json(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
            return
        model = str(body.get("model", "?")).rsplit("/", 1)[-1]  # a provider's id "org/name" acts as "name"
        server.calls[model] += 1
        server.bodies.append(body)
        text = str((body.get("messages") or [{}])[-1].get("content", ""))
        if model in server.failing:
            if server.failing[model] == 0:  # hang up without a status line
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._json(server.failing[model], {"error": {"message": f"{model} is failing"}}, server.failing_headers.get(model))
            return
        window = server.context_chars.get(model)
        length = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])
        if window is not None and length > window:
            self._json(400, {"error": {"message": f"This model's maximum context length is {window} tokens. However, you "
                                                  f"requested {length} tokens. Please reduce the length of the messages.",
                                       "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
            return
        if "upstream-fail" in text:
            self._json(500, {"error": {"message": "internal error"}})
            return
        if "upstream-hang" in text:
            time.sleep(30)
        time.sleep(server.delays.get(model, 0.0))
        tool = _tool_of(body)
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        if body.get("stream"):
            self._stream(model, slow="upstream-slow" in text, usage=bool((body.get("stream_options") or {}).get("include_usage")),
                         tool=tool, cap=cap)
            return
        words = _words(model, False, cap)
        message = {"role": "assistant", "content": server.judge_reply if model == "judge" else "".join(words)}
        if tool is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": ARGUMENTS}}]}
        self._json(200, {
            "id": f"chatcmpl-{server.calls.total()}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),  # the id it was asked for, as a provider answers
            "choices": [{"index": 0, "finish_reason": "tool_calls" if tool else "length" if len(words) < 3 else "stop",
                         "message": message}],
            "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)},
        })

    def _stream(self, model: str, slow: bool, usage: bool, tool: str | None = None, cap: int | None = None) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        words = _words(model, slow, cap)
        base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        deltas = [{"role": "assistant", "content": w} if i == 0 else {"content": w} for i, w in enumerate(words)]
        if tool is not None:  # OpenAI's shape: the call's id and name first, then its arguments in pieces
            pieces = [ARGUMENTS[:4], ARGUMENTS[4:]]
            deltas = [{"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": tool, "arguments": ""}}]}]
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
        finish = "tool_calls" if tool else "length" if not slow and len(words) < 3 else "stop"
        try:
            for delta in deltas:
                chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
                if slow:
                    time.sleep(0.1)
            end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
            self.wfile.write(b"data: " + json.dumps(end).encode() + b"\n\n")
            if usage:  # OpenAI's stream_options.include_usage: one more chunk, no choices
                tail = {**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}}
                self.wfile.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.server.completed_streams += 1
        except (BrokenPipeError, ConnectionResetError):
            self.server.disconnects.append(time.time())


ARGUMENTS = '{"city": "Paris"}'  # what a called tool is given


def _tool_of(body: dict) -> str | None:
    """The first function tool's name, when the request offers tools (and does not forbid calls):
    the answer is then a call of it."""
    tools = body.get("tools") or []
    if not tools or body.get("tool_choice") == "none":
        return None
    return (tools[0].get("function") or {}).get("name")


def _words(model: str, slow: bool, cap: int | None) -> list[str]:
    """The answer's words, one token each: at most `cap` of them (max_completion_tokens / max_tokens),
    the answer then cut short (finish_reason "length")."""
    words = ["answer", " from", f" {model}"] if not slow else [f" w{i}" for i in range(100)]
    return words[:cap] if isinstance(cap, int) and cap > 0 else words


class Upstream:
    def __init__(self, api_key: str | None = None):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.calls = Counter()
        self.server.api_key = api_key
        self.server.seen_auth, self.server.bodies, self.server.disconnects = [], [], []
        self.server.requests = []  # (path with query, lower-cased headers) of every POST
        self.server.completed_streams = 0
        self.server.failing = {}
        self.server.failing_headers = {}
        self.server.delays = {}
        self.server.context_chars = {}
        self.server.judge_reply = "I cannot grade this."
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def calls(self) -> Counter:
        return self.server.calls

    @property
    def failing(self) -> dict[str, int]:
        return self.server.failing

    @property
    def failing_headers(self) -> dict[str, dict[str, str]]:
        return self.server.failing_headers

    @property
    def delays(self) -> dict[str, float]:
        return self.server.delays

    @property
    def context_chars(self) -> dict[str, int]:
        return self.server.context_chars

    @property
    def bodies(self) -> list[dict]:
        return self.server.bodies

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
