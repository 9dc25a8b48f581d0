"""A local stand-in for Slack: an incoming webhook and ``chat.postMessage``.

Used by the tests (``tests/slack/fake_slack.py`` re-exports it) and by
``mlwatchd soak``, which points running daemons at it and switches its fault
mode on for a while (:meth:`FakeSlack.set_fault`).

Real slack-sdk clients talk to it over HTTP on 127.0.0.1, so tests exercise the
real request encoding, status handling and retry handlers instead of a mock::

    with FakeSlack() as slack:
        slack.script(Reply.rate_limited(retry_after=1), Reply.server_error())
        client = WebClient(token=slack.token, base_url=slack.api_base_url)
        client.chat_postMessage(channel="#sec", text="hi")  # retried by its handlers
        assert slack.delivered[0].body["text"] == "hi"

What it answers, unless scripted otherwise:

* ``POST {webhook_url}`` (JSON body with ``text`` or ``blocks``): 200 ``ok``;
  400 ``invalid_payload`` for a body that is not a JSON object, 400
  ``no_text`` without text/blocks, 404 ``no_service`` for another
  ``/services/...`` path (a revoked or mistyped webhook).
* ``POST {api_base_url}chat.postMessage`` (JSON or form body, ``blocks`` may be
  a JSON string in a form): ``{"ok": true, "channel", "ts", "message"}`` with a
  fresh ``ts``; like Slack, HTTP 200 ``{"ok": false, "error": ...}`` for
  ``not_authed`` (no bearer token), ``invalid_auth`` (wrong token),
  ``channel_not_found`` (no channel) and ``no_text``. ``thread_ts`` is kept in
  the recorded body, and must name an earlier message (else ``thread_not_found``).
* ``POST {api_base_url}chat.update`` (``channel``, ``ts`` of an earlier
  message): ``{"ok": true, "channel", "ts"}``; ``message_not_found`` otherwise.
* Channels: a ``#name`` (or bare name) in ``chat.postMessage`` is a channel the
  bot is in, created on first use with an id ``C...``; the answer's
  ``channel`` is that id, as Slack's is. ``metadata`` (``event_type`` and
  ``event_payload``, a JSON object or, in a form, JSON text) is stored with the
  message.
* ``GET``/``POST {api_base_url}conversations.history`` (``channel`` id,
  ``oldest``, ``latest``, ``inclusive``, ``limit`` (default 100, at most 999),
  ``cursor``, ``include_all_metadata``): top-level messages newest first, with
  ``has_more`` and ``response_metadata.next_cursor``; a channel *name* is
  ``channel_not_found`` there, as on Slack; a bad cursor ``invalid_cursor``.
  Metadata is in the messages only with ``include_all_metadata``.
* ``conversations.replies`` (``channel`` id, ``ts`` of a thread's parent, same
  paging): the parent, then its replies, oldest first; ``thread_not_found``.
* ``conversations.list`` (``limit``, ``cursor``): the channels above, paged.

Interactivity: :meth:`FakeSlack.interaction` builds what Slack sends to an
app's interactivity URL when someone clicks one of a posted message's buttons
(a form body ``payload=<block_actions JSON>`` and real v0 signature headers);
:meth:`FakeSlack.click` also POSTs it to a URL.

Scripted replies (:meth:`FakeSlack.script`) answer the next requests in
order, one each (a reply with ``endpoint`` set waits for a request to that
endpoint; ``Reply.lost()`` takes a post, then drops the connection without an
answer: a post that reached Slack whose outcome the client cannot know),
before the normal behaviour resumes. A fault mode
(:meth:`FakeSlack.set_fault`: ``rate_limit`` = 429 with ``Retry-After``,
``server_error`` = 500/502/503 in turn, ``mixed`` = both in turn) answers every
request that no scripted reply takes until it is switched off. Every request is
recorded (:attr:`FakeSlack.requests`) with its parsed body, headers, arrival
time and the status it got; accepted messages are also in
:attr:`FakeSlack.delivered`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import parse_qs, urlencode

__all__ = ["WEBHOOK_ERROR_STATUS", "Endpoint", "FakeSlack", "FaultMode", "Reply", "SlackRequest"]

Endpoint: TypeAlias = Literal["webhook", "chat.postMessage", "chat.update",
                              "conversations.history", "conversations.replies",
                              "conversations.list", "unknown"]
_API_METHODS: Final = ("chat.postMessage", "chat.update", "conversations.history",
                       "conversations.replies", "conversations.list")
#: What :meth:`FakeSlack.set_fault` can make every unscripted request get.
FaultMode: TypeAlias = Literal["rate_limit", "server_error", "mixed"]

#: Incoming-webhook error codes and the HTTP status Slack sends them with.
WEBHOOK_ERROR_STATUS: Final[Mapping[str, int]] = {
    "invalid_payload": 400,
    "no_text": 400,
    "user_not_found": 400,
    "action_prohibited": 403,
    "invalid_token": 403,
    "channel_not_found": 404,
    "no_service": 404,
    "no_team": 404,
    "channel_is_archived": 410,
    "team_disabled": 410,
    "rate_limited": 429,
    "internal_error": 500,
}
_FAULT_STATUSES: Final = (500, 502, 503)
_STATUS_ERROR: Final = {429: "rate_limited", 500: "internal_error", 502: "bad_gateway",
                        503: "service_unavailable", 504: "gateway_timeout"}


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Leave a field None for the endpoint's usual value.

    ``status`` 200 with no ``error`` and no ``body`` means "answer normally"
    (sent ``delay_s`` after the request is recorded), so ``Reply(delay_s=2)``
    scripts a slow but good reply.
    ``error`` becomes ``{"ok": false, "error": ...}`` on the Web API (HTTP 200
    unless ``status`` says otherwise) and the text body on the webhook (with the
    status Slack uses for that code, see :data:`WEBHOOK_ERROR_STATUS`).
    """

    status: int | None = None
    error: str | None = None
    retry_after: str | int | float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | Mapping[str, Any] | None = None
    delay_s: float = 0.0
    #: Answer only a request to this endpoint (others pass it by); None: any.
    endpoint: Endpoint | None = None
    #: Do everything as usual, then close the connection without an answer.
    drop: bool = False

    @classmethod
    def rate_limited(cls, retry_after: str | int | float | None = 1) -> Reply:
        """429 with ``Retry-After`` (seconds, or an HTTP date string; None omits it)."""
        return cls(status=429, retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500) -> Reply:
        return cls(status=status)

    @classmethod
    def failure(cls, error: str, status: int | None = None) -> Reply:
        """A Slack error code, e.g. ``channel_not_found``, ``invalid_auth``, ``no_service``."""
        return cls(status=status, error=error)

    @classmethod
    def slow(cls, delay_s: float) -> Reply:
        return cls(delay_s=delay_s)

    @classmethod
    def lost(cls, endpoint: Endpoint | None = "chat.postMessage") -> Reply:
        """The request is taken (a post is shown), the answer never arrives."""
        return cls(drop=True, endpoint=endpoint)

    def is_normal(self) -> bool:
        return self.status in (None, 200) and self.error is None and self.body is None


@dataclass(frozen=True)
class SlackRequest:
    """One request as the fake saw it, and what it answered."""

    endpoint: Endpoint
    method: str
    path: str
    headers: Mapping[str, str]  # keys lower-cased
    body: Mapping[str, Any]  # parsed JSON/form; {} when unparseable
    raw: bytes
    at: float  # time.monotonic() on arrival
    status: int
    response: str
    delivered: bool  # the message was accepted (a 200 success)

    def text_of_everything(self) -> str:
        """Headers, path and body as one string: for "this never left" assertions."""
        head = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.path}\n{head}\n{self.raw.decode('utf-8', 'replace')}"


class FakeSlack:
    """A threaded HTTP server on 127.0.0.1 (free port) speaking the Slack endpoints we use."""

    def __init__(self, token: str = "xoxb-fake-0000-token") -> None:
        self.token = token
        self.webhook_path = (
            f"/services/T{secrets.token_hex(4).upper()}/B{secrets.token_hex(4).upper()}/"
            f"{secrets.token_hex(12)}"
        )
        self._lock = threading.Condition()
        self._requests: list[SlackRequest] = []
        self._scripted: deque[Reply] = deque()
        self._ts = 0
        self._fault: FaultMode | None = None
        self._fault_retry_after: str | int | float = 1
        self._fault_count = 0
        self._posted: set[str] = set()  # ts of accepted chat.postMessage messages
        self._channels: dict[str, str] = {}  # name -> id
        self._messages: dict[str, list[dict[str, Any]]] = {}  # channel id -> oldest first
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeSlack:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name="fake-slack", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_base_url(self) -> str:
        """For ``WebClient(base_url=...)`` / ``slack.api_base_url``."""
        return self.base_url + "/api/"

    @property
    def webhook_url(self) -> str:
        return self.base_url + self.webhook_path

    # -- scripting and assertions -------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Answer the next ``len(replies)`` requests (any endpoint) with these, in order."""
        with self._lock:
            self._scripted.extend(replies)

    @property
    def requests(self) -> list[SlackRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def delivered(self) -> list[SlackRequest]:
        """Requests whose message Slack would have shown."""
        with self._lock:
            return [r for r in self._requests if r.delivered]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[SlackRequest]:
        """Block until at least ``count`` requests arrived; raise TimeoutError otherwise."""
        return self._wait(lambda: len(self._requests) >= count, timeout, f"{count} requests")

    def wait_for_delivered(self, count: int, timeout: float = 5.0) -> list[SlackRequest]:
        """Block until at least ``count`` messages were accepted; returns them."""
        self._wait(lambda: sum(r.delivered for r in self._requests) >= count, timeout,
                   f"{count} delivered messages")
        return self.delivered

    def set_fault(self, mode: FaultMode | None, retry_after: str | int | float = 1) -> None:
        """Answer every unscripted request with a fault until ``set_fault(None)``.

        ``rate_limit``: 429 with ``Retry-After: retry_after``; ``server_error``:
        500, 502, 503 in turn; ``mixed``: 429, 500, 503, 429, 502, ... in turn.
        """
        with self._lock:
            self._fault = mode
            self._fault_retry_after = retry_after

    @property
    def faults_answered(self) -> int:
        """How many requests the fault mode has answered so far."""
        with self._lock:
            return self._fault_count

    def clear(self) -> None:
        """Forget recorded requests and unused scripted replies."""
        with self._lock:
            self._requests.clear()
            self._scripted.clear()

    def _wait(self, done: Any, timeout: float, what: str) -> list[SlackRequest]:
        with self._lock:
            if not self._lock.wait_for(done, timeout):
                raise TimeoutError(f"fake Slack: no {what} within {timeout}s "
                                   f"(got {len(self._requests)} requests)")
            return list(self._requests)

    # -- server side (called from handler threads) ----------------------------

    def _next_reply(self, endpoint: Endpoint = "unknown") -> Reply:
        with self._lock:
            for i, scripted in enumerate(self._scripted):
                if scripted.endpoint is None or scripted.endpoint == endpoint:
                    del self._scripted[i]
                    return scripted
            if self._fault is None:
                return Reply()
            turn = self._fault_count
            self._fault_count += 1
            if self._fault == "rate_limit":
                return Reply.rate_limited(self._fault_retry_after)
            if self._fault == "server_error":
                return Reply.server_error(_FAULT_STATUSES[turn % len(_FAULT_STATUSES)])
            if turn % 2 == 0:
                return Reply.rate_limited(self._fault_retry_after)
            return Reply.server_error(_FAULT_STATUSES[(turn // 2) % len(_FAULT_STATUSES)])

    def _fresh_ts(self) -> str:
        with self._lock:
            self._ts += 1
            ts = f"{int(time.time())}.{self._ts:06d}"
            self._posted.add(ts)
            return ts

    def _known_ts(self, ts: str) -> bool:
        with self._lock:
            return ts in self._posted

    def channel_id(self, name: str) -> str:
        """The id of channel ``name`` (``#name`` or bare), created on first use."""
        bare = name.lstrip("#")
        with self._lock:
            if bare not in self._channels:
                self._channels[bare] = "C" + hashlib.sha256(bare.encode()).hexdigest()[:9].upper()
            return self._channels[bare]

    def _resolve_channel(self, channel: str) -> str:
        with self._lock:
            if channel in self._channels.values():
                return channel
        return self.channel_id(channel)

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """What the channel (id or name) shows, oldest first, thread replies included."""
        with self._lock:
            return [dict(m) for m in self._messages.get(self._resolve_channel(channel), [])]

    def _store(self, channel: str, body: Mapping[str, Any], ts: str) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "message", "subtype": "bot_message",
                                   "bot_id": "B0FAKE", "app_id": "A0FAKE",
                                   "text": body.get("text", ""), "ts": ts}
        metadata = body.get("metadata")
        if isinstance(metadata, str):
            with contextlib.suppress(ValueError):
                metadata = json.loads(metadata)
        if isinstance(metadata, dict) and metadata.get("event_type"):
            message["metadata"] = {"event_type": str(metadata["event_type"]),
                                   "event_payload": dict(metadata.get("event_payload") or {})}
        if body.get("thread_ts"):
            message["thread_ts"] = str(body["thread_ts"])
        with self._lock:
            self._messages.setdefault(channel, []).append(message)
        return message

    def _read_api(self, endpoint: Endpoint, body: Mapping[str, Any]
                  ) -> tuple[int, Mapping[str, Any]]:
        """conversations.history / .replies / .list, paged like Slack's."""
        try:
            limit = min(999, max(1, int(body.get("limit") or 100)))
        except ValueError:
            return 200, {"ok": False, "error": "invalid_limit"}
        cursor = str(body.get("cursor") or "")
        offset = 0
        if cursor:
            try:
                offset = int(base64.b64decode(cursor.encode(), validate=True).decode()
                             .removeprefix("offset:"))
            except (ValueError, UnicodeDecodeError):
                return 200, {"ok": False, "error": "invalid_cursor"}
        if endpoint == "conversations.list":
            with self._lock:
                every: list[dict[str, Any]] = [
                    {"id": cid, "name": name, "is_channel": True, "is_private": False,
                     "is_archived": False, "is_member": True}
                    for name, cid in self._channels.items()]
            key = "channels"
        else:
            channel = str(body.get("channel") or "")
            with self._lock:
                known = channel in self._channels.values()
                stored = list(self._messages.get(channel, []))
            if not known:
                return 200, {"ok": False, "error": "channel_not_found"}
            metadata = str(body.get("include_all_metadata", "")).lower() in ("1", "true")
            if endpoint == "conversations.history":
                every = [m for m in reversed(stored) if "thread_ts" not in m]
            else:
                parent = str(body.get("ts") or "")
                top = [m for m in stored if m["ts"] == parent and "thread_ts" not in m]
                if not top:
                    return 200, {"ok": False, "error": "thread_not_found"}
                every = top + [m for m in stored if m.get("thread_ts") == parent]
            inclusive = str(body.get("inclusive", "")).lower() in ("1", "true")
            oldest = float(body.get("oldest") or 0)
            latest = float(body.get("latest") or time.time() + 1e6)
            every = [m for m in every if (oldest <= float(m["ts"]) <= latest if inclusive else
                                          oldest < float(m["ts"]) < latest)
                     or (endpoint == "conversations.replies" and m is every[0])]
            every = [m if metadata else {k: v for k, v in m.items() if k != "metadata"}
                     for m in every]
            key = "messages"
        page = every[offset:offset + limit]
        more = offset + limit < len(every)
        next_cursor = base64.b64encode(f"offset:{offset + limit}".encode()).decode() if more \
            else ""
        answer: dict[str, Any] = {"ok": True, key: page,
                                  "response_metadata": {"next_cursor": next_cursor}}
        if key == "messages":
            answer["has_more"] = more
        return 200, answer

    # -- interactivity --------------------------------------------------------

    def interaction(
        self,
        message: SlackRequest,
        action_id: str,
        *,
        signing_secret: str,
        user_id: str = "U0APPROVER",
        user_name: str = "alice",
        timestamp: int | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body Slack sends when ``user_id`` clicks ``action_id`` in ``message``.

        ``message`` is a recorded request whose blocks hold the button; its
        ``value`` is sent back as Slack does. The signature is Slack's v0
        scheme over ``timestamp`` (default: now) and the exact body.
        """
        button = _find_button(message.body.get("blocks") or [], action_id)
        if button is None:
            raise KeyError(f"no button {action_id!r} in that message")
        answer: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            answer = json.loads(message.response) if message.response.startswith("{") else {}
        channel = str(answer.get("channel") or message.body.get("channel") or "C0WEBHOOK")
        ts = str(answer.get("ts") or "0000000000.000000")
        payload = {
            "type": "block_actions",
            "user": {"id": user_id, "username": user_name, "team_id": "T0FAKE"},
            "api_app_id": "A0FAKE",
            "container": {"type": "message", "message_ts": ts, "channel_id": channel},
            "channel": {"id": channel, "name": "ml-security"},
            "message": {"type": "message", "ts": ts, "text": message.body.get("text", "")},
            "response_url": self.base_url + "/actions/response",
            "trigger_id": secrets.token_hex(8),
            "actions": [{
                "type": "button", "action_id": action_id, "block_id": "b",
                "value": button.get("value", ""),
                "text": button.get("text", {}), "action_ts": f"{time.time():.6f}",
            }],
        }
        body = urlencode({"payload": json.dumps(payload)}).encode()
        stamp = int(time.time()) if timestamp is None else timestamp
        base = b"v0:" + str(stamp).encode() + b":" + body
        signature = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(stamp),
            "X-Slack-Signature": signature,
        }
        return headers, body

    @staticmethod
    def click(url: str, headers: Mapping[str, str], body: bytes, timeout: float = 5.0
              ) -> tuple[int, bytes]:
        """POST an :meth:`interaction` to an interactivity URL; returns (status, body)."""
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _record(self, request: SlackRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _answer(
        self, endpoint: Endpoint, path: str, headers: Mapping[str, str], raw: bytes,
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str, Mapping[str, Any], Reply]:
        """(status, headers, body text, parsed request body, reply) for one request."""
        body = _parse_body(headers.get("content-type", ""), raw)
        if query:
            body = {**query, **body}
        reply = self._next_reply(endpoint)
        extra = dict(reply.headers)
        if reply.retry_after is not None:
            extra["Retry-After"] = str(reply.retry_after)
        if endpoint == "webhook":
            status, text = self._webhook_answer(path, body, raw, reply)
            return status, {"Content-Type": "text/html", **extra}, text, body, reply
        if endpoint in _API_METHODS:
            status, payload = self._api_answer(headers, body, reply, endpoint)
        else:
            status, payload = 404, {"ok": False, "error": "unknown_method"}
        text = payload if isinstance(payload, str) else json.dumps(payload)
        json_type = {"Content-Type": "application/json; charset=utf-8"}
        return status, {**json_type, **extra}, text, body, reply

    def _webhook_answer(
        self, path: str, body: Mapping[str, Any], raw: bytes, reply: Reply
    ) -> tuple[int, str]:
        if not reply.is_normal():
            status = reply.status or WEBHOOK_ERROR_STATUS.get(reply.error or "", 400)
            if isinstance(reply.body, str):
                return status, reply.body
            return status, reply.error or _STATUS_ERROR.get(status, "invalid_payload")
        if path != self.webhook_path:
            return 404, "no_service"
        if not body and raw:
            return 400, "invalid_payload"
        if not body.get("text") and not body.get("blocks"):
            return 400, "no_text"
        return 200, "ok"

    def _api_answer(
        self, headers: Mapping[str, str], body: Mapping[str, Any], reply: Reply,
        endpoint: Endpoint = "chat.postMessage",
    ) -> tuple[int, str | Mapping[str, Any]]:
        if not reply.is_normal():
            status = reply.status or 200
            if reply.body is not None:
                return status, reply.body if isinstance(reply.body, str) else dict(reply.body)
            error = reply.error or _STATUS_ERROR.get(status, "internal_error")
            if status == 429:
                error = reply.error or "ratelimited"
            return status, {"ok": False, "error": error}
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return 200, {"ok": False, "error": "not_authed"}
        if auth.removeprefix("Bearer ") != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}
        if endpoint in ("conversations.history", "conversations.replies",
                        "conversations.list"):
            return self._read_api(endpoint, body)
        if not body.get("channel"):
            return 200, {"ok": False, "error": "channel_not_found"}
        if not body.get("text") and not body.get("blocks"):
            return 200, {"ok": False, "error": "no_text"}
        if endpoint == "chat.update":
            ts = str(body.get("ts") or "")
            if not self._known_ts(ts):
                return 200, {"ok": False, "error": "message_not_found"}
            return 200, {"ok": True, "channel": self._resolve_channel(str(body["channel"])),
                         "ts": ts, "text": body.get("text", "")}
        thread = body.get("thread_ts")
        if thread and not self._known_ts(str(thread)):
            return 200, {"ok": False, "error": "thread_not_found"}
        ts = self._fresh_ts()
        channel = self._resolve_channel(str(body["channel"]))
        message = self._store(channel, body, ts)
        return 200, {"ok": True, "channel": channel, "ts": ts, "message": message}


def _find_button(blocks: Any, action_id: str) -> dict[str, Any] | None:
    for block in blocks if isinstance(blocks, list) else []:
        for element in block.get("elements", []) if isinstance(block, dict) else []:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return element
    return None


def _parse_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """JSON or form body as a dict; ``blocks`` decoded when a form sent it as JSON text."""
    text = raw.decode("utf-8", "replace")
    parsed: Any
    if "application/x-www-form-urlencoded" in content_type:
        parsed = {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}
    else:
        try:
            parsed = json.loads(text) if text else {}
        except ValueError:
            return {}
    if not isinstance(parsed, dict):
        return {}
    for key in ("blocks", "attachments"):
        if isinstance(parsed.get(key), str):
            with contextlib.suppress(ValueError):  # not JSON: keep the text
                parsed[key] = json.loads(parsed[key])
    return parsed


def _make_handler(fake: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeSlack/1"

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path.removeprefix("/api/") in ("conversations.history", "conversations.replies",
                                              "conversations.list"):
                self._serve("GET")
            else:
                self.send_error(405)

        def _serve(self, method: str) -> None:
            arrived = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path, _, qs = self.path.partition("?")
            query = {k: v[0] for k, v in parse_qs(qs, keep_blank_values=True).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            endpoint: Endpoint
            method_name = path.rstrip("/").removeprefix("/api/")
            if path.startswith("/services/"):
                endpoint = "webhook"
            elif path.startswith("/api/") and method_name in _API_METHODS:
                endpoint = method_name  # type: ignore[assignment]  # checked just above
            else:
                endpoint = "unknown"
            status, out_headers, text, body, reply = fake._answer(endpoint, path, headers, raw,
                                                                  query)
            delivered = status == 200 and (
                text == "ok" if endpoint == "webhook" else
                endpoint in ("chat.postMessage", "chat.update") and '"ok": true' in text
            )
            # Recorded on arrival, before any scripted delay: a test can wait for
            # "the client is now waiting on Slack", and once a client has its
            # answer the record exists.
            fake._record(SlackRequest(endpoint, method, path, headers, body, raw, arrived,
                                      status, text, delivered))
            if reply.delay_s:
                time.sleep(reply.delay_s)
            if reply.drop:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            data = text.encode("utf-8")
            try:
                self.send_response(status)
                for key, value in out_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up (timeout); the request is recorded all the same

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; assertions use fake.requests

    return Handler
