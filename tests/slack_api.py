"""A local stand-in for the Slack Web API over real HTTP, with injectable faults, so the approval flow is
tested through the real slack_sdk client (its retries, timeouts and error parsing) without a workspace."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

PERMALINK_BASE = "https://fake-slack.example/archives"


@dataclass(frozen=True)
class RateLimited:
    """HTTP 429 with a Retry-After header; Slack did not process the call."""

    retry_after: int = 1


@dataclass(frozen=True)
class ServerError:
    """An HTTP 5xx with a non-JSON body, as Slack's edge sends; the call was not processed."""

    status: int = 503


@dataclass(frozen=True)
class Timeout:
    """The client never hears back: the server waits `seconds` (make it longer than the client's timeout),
    then drops the connection. With after_processing the call is applied first (a posted message IS stored),
    else it is never applied."""

    seconds: float
    after_processing: bool = False


@dataclass(frozen=True)
class ApiError:
    """HTTP 200 with {"ok": false, "error": error}; `needed` is the scope Slack names for missing_scope."""

    error: str
    needed: str | None = None


@dataclass(frozen=True)
class KillClient:
    """The call is applied (a posted message IS stored), then the client's process group is killed with
    SIGKILL before any answer: a crash in the middle of the call."""

    process_group: int


Fault = RateLimited | ServerError | Timeout | ApiError | KillClient


class _Refused(Exception):
    """A Slack API error answer, raised by a method handler."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class FakeSlack:
    """A threaded HTTP server on 127.0.0.1 speaking the Web API methods the approval flow uses.

    Use as a context manager (`with FakeSlack() as slack:`) or through the `fake_slack` fixture below. Point
    `slack_sdk.WebClient(base_url=slack.base_url, token=slack.token)` at it. `max_page_size` caps `limit` on
    paginated methods, as Slack may return fewer items than asked, so tests can exercise pagination cheaply.
    """

    def __init__(self, *, max_page_size: int = 200) -> None:
        self.token = f"xoxb-fake-{secrets.token_hex(12)}"
        self.bot_user_id = "U0BACKFILLS"
        self.bot_id = "B0BACKFILLS"
        self.max_page_size = max_page_size
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        # Set on close, so handlers waiting out a Timeout fault return at once instead of holding up shutdown.
        self._closing = threading.Event()
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._channels: dict[str, str] = {}
        self._messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._threads: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self._reactions: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(dict)
        self._users: dict[str, dict[str, Any]] = {}
        self._usergroups: dict[str, list[str]] = {}
        self._last_ts = 0
        self.add_user(self.bot_user_id, "backfills", is_bot=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._serving: threading.Thread | None = None
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    # Lifecycle

    def start(self) -> FakeSlack:
        """Serve in a background thread; idempotent."""
        if self._serving is None:
            # A short poll: shutdown waits for it, and every test that uses a FakeSlack pays that wait.
            self._serving = threading.Thread(
                target=self._server.serve_forever, args=(0.02,), name="fake-slack", daemon=True
            )
            self._serving.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._closing.set()
        if self._serving is not None:
            self._server.shutdown()
            self._serving.join()
            self._serving = None
        self._server.server_close()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FakeSlack(base_url={self.base_url!r})"

    # Workspace setup and what people do in the Slack app

    def add_user(
        self,
        user_id: str,
        display_name: str,
        *,
        is_bot: bool = False,
        deleted: bool = False,
        real_name: str | None = None,
        email: str | None = None,
    ) -> None:
        """A workspace member (or bot user) that users.info, users.list and users.lookupByEmail describe."""
        with self._lock:
            profile = {"display_name": display_name, "real_name": real_name or display_name}
            if email is not None:
                profile["email"] = email
            self._users[user_id] = {
                "id": user_id,
                "name": display_name.lower().replace(" ", "."),
                "deleted": deleted,
                "is_bot": is_bot,
                "profile": profile,
            }

    def add_channel(self, channel_id: str, name: str) -> None:
        """A channel the bot is a member of."""
        with self._lock:
            self._channels[channel_id] = name

    def add_usergroup(self, usergroup_id: str, members: list[str] | tuple[str, ...] | frozenset[str]) -> None:
        """A user group (subteam) with these member user IDs."""
        with self._lock:
            self._usergroups[usergroup_id] = sorted(members)

    def react(self, channel: str, ts: str, user_id: str, name: str) -> None:
        """A person adds the reaction `name` (e.g. "white_check_mark") to a message or thread reply."""
        with self._lock:
            self._find_message(channel, ts)
            users = self._reactions[(channel, ts)].setdefault(name, [])
            if user_id not in users:
                users.append(user_id)

    def reply(
        self, channel: str, thread_ts: str, user_id: str, text: str, *, bot_id: str | None = None
    ) -> str:
        """A person (or, with bot_id, an app) replies in the thread of `thread_ts`; returns the reply's ts."""
        with self._lock:
            self._top_level(channel, thread_ts)
            message = {"type": "message", "user": user_id, "text": text, "thread_ts": thread_ts}
            if bot_id is not None:
                message["bot_id"] = bot_id
            return self._add_reply(channel, thread_ts, message)

    def inject(self, method: str, *faults: Fault) -> None:
        """Queue faults for the next calls of `method` (e.g. "chat.postMessage"), one consumed per call."""
        with self._lock:
            self._faults[method].extend(faults)

    # What tests assert on

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Top-level messages in the channel, oldest first, with blocks and metadata as posted."""
        with self._lock:
            return [dict(message) for message in self._messages[channel]]

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """Replies in the thread of `ts`, oldest first, parent excluded."""
        with self._lock:
            return [dict(message) for message in self._threads[(channel, ts)]]

    def calls_of(self, method: str) -> list[dict[str, Any]]:
        """Parameters of every call of `method` received, faulted ones included."""
        with self._lock:
            return [params for name, params in self.calls if name == method]

    # Internals: state (call with the lock held)

    def _next_ts(self) -> str:
        # Wall-clock based like Slack's, so callers' `oldest` windows work, and strictly increasing.
        micros = max(int(time.time() * 1_000_000), self._last_ts + 1)
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _channel_id(self, channel: object) -> str:
        key = str(channel or "").lstrip("#")
        if key in self._channels:
            return key
        for channel_id, name in self._channels.items():
            if name == key:
                return channel_id
        raise _Refused("channel_not_found")

    def _top_level(self, channel: str, ts: str) -> dict[str, Any]:
        for message in self._messages[channel]:
            if message["ts"] == ts:
                return message
        raise _Refused("thread_not_found")

    def _find_message(self, channel: str, ts: str) -> dict[str, Any]:
        for message in self._messages[channel]:
            if message["ts"] == ts:
                return message
        for (thread_channel, _), replies in self._threads.items():
            if thread_channel != channel:
                continue
            for message in replies:
                if message["ts"] == ts:
                    return message
        raise _Refused("message_not_found")

    def _add_reply(self, channel: str, thread_ts: str, message: dict[str, Any]) -> str:
        parent = self._top_level(channel, thread_ts)
        message["ts"] = self._next_ts()
        self._threads[(channel, thread_ts)].append(message)
        parent["thread_ts"] = thread_ts
        parent["reply_count"] = len(self._threads[(channel, thread_ts)])
        return message["ts"]

    def _with_reactions(self, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        shown = dict(message)
        reactions = self._reactions.get((channel, message["ts"]), {})
        if reactions:
            shown["reactions"] = [
                {"name": name, "users": list(users), "count": len(users)} for name, users in reactions.items()
            ]
        return shown

    def _page(self, items: list[dict[str, Any]], params: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        limit = min(int(params.get("limit") or 100), self.max_page_size)
        start = int(base64.b64decode(params["cursor"]).decode()) if params.get("cursor") else 0
        end = start + limit
        next_cursor = base64.b64encode(str(end).encode()).decode() if end < len(items) else ""
        return items[start:end], next_cursor

    # Internals: the Web API methods

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake-slack.example/",
            "team": "Fake",
            "team_id": "T0FAKE",
            "user": "backfills",
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
        }

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_id(params.get("channel"))
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "text": params.get("text") or "",
        }
        for key in ("blocks", "metadata"):
            if params.get(key):
                message[key] = _json_value(params[key])
        if params.get("thread_ts"):
            message["thread_ts"] = str(params["thread_ts"])
            ts = self._add_reply(channel, message["thread_ts"], message)
        else:
            message["ts"] = ts = self._next_ts()
            self._messages[channel].append(message)
        return {"channel": channel, "ts": ts, "message": dict(message)}

    def _chat_get_permalink(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_id(params.get("channel"))
        ts = str(params.get("message_ts"))
        self._find_message(channel, ts)
        return {"channel": channel, "permalink": f"{PERMALINK_BASE}/{channel}/p{ts.replace('.', '')}"}

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_id(params.get("channel"))
        oldest = float(params.get("oldest") or 0)
        latest = float(params["latest"]) if params.get("latest") else float("inf")
        with_metadata = _flag(params.get("include_all_metadata"))
        newest_first = [
            self._with_reactions(channel, message)
            for message in reversed(self._messages[channel])
            if oldest < float(message["ts"]) < latest
        ]
        if not with_metadata:
            for message in newest_first:
                message.pop("metadata", None)
        page, next_cursor = self._page(newest_first, params)
        return {
            "messages": page,
            "has_more": bool(next_cursor),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_id(params.get("channel"))
        ts = str(params.get("ts"))
        parent = self._top_level(channel, ts)
        # Like Slack: the parent comes first, then the replies oldest first.
        thread = [parent, *self._threads[(channel, ts)]]
        page, next_cursor = self._page([self._with_reactions(channel, message) for message in thread], params)
        return {
            "messages": page,
            "has_more": bool(next_cursor),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _reactions_get(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_id(params.get("channel"))
        message = self._find_message(channel, str(params.get("timestamp")))
        return {"type": "message", "channel": channel, "message": self._with_reactions(channel, message)}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._users.get(str(params.get("user")))
        if user is None:
            raise _Refused("user_not_found")
        return {"user": json.loads(json.dumps(user))}

    def _users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        page, next_cursor = self._page(json.loads(json.dumps(list(self._users.values()))), params)
        return {"members": page, "response_metadata": {"next_cursor": next_cursor}}

    def _users_lookup_by_email(self, params: dict[str, Any]) -> dict[str, Any]:
        email = str(params.get("email") or "").lower()
        for user in self._users.values():
            if user["profile"].get("email", "").lower() == email:
                return {"user": json.loads(json.dumps(user))}
        raise _Refused("users_not_found")

    def _usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        members = self._usergroups.get(str(params.get("usergroup")))
        if members is None:
            raise _Refused("no_such_subteam")
        return {"users": list(members)}

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "reactions.get": self._reactions_get,
            "users.info": self._users_info,
            "users.list": self._users_list,
            "users.lookupByEmail": self._users_lookup_by_email,
            "usergroups.users.list": self._usergroups_users_list,
        }

    def _apply(self, method: str, token: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON answer to one call that reached the method (no fault in the way)."""
        with self._lock:
            if not token:
                return {"ok": False, "error": "not_authed"}
            if token != self.token:
                return {"ok": False, "error": "invalid_auth"}
            handler = self._methods().get(method)
            if handler is None:
                return {"ok": False, "error": "unknown_method"}
            try:
                return {"ok": True, **handler(params)}
            except _Refused as refused:
                return {"ok": False, "error": refused.error}

    def _receive(self, method: str, params: dict[str, Any]) -> Fault | None:
        with self._lock:
            self.calls.append((method, params))
            queue = self._faults.get(method)
            return queue.popleft() if queue else None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
                self._serve()

            def do_GET(self) -> None:  # noqa: N802
                self._serve()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests assert on `calls`, not on a request log."""

            def _serve(self) -> None:
                url = urlsplit(self.path)
                if not url.path.startswith("/api/"):
                    self._answer(404, {"ok": False, "error": "not_found"})
                    return
                method = url.path.removeprefix("/api/")
                params: dict[str, Any] = dict(parse_qsl(url.query))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                content_type = self.headers.get("Content-Type", "")
                if body and "json" in content_type:
                    params.update(json.loads(body))
                elif body:
                    params.update(parse_qsl(body.decode()))
                token = params.pop("token", None)
                authorization = self.headers.get("Authorization", "")
                if authorization.startswith("Bearer "):
                    token = authorization.removeprefix("Bearer ")

                fault = fake._receive(method, params)
                if isinstance(fault, RateLimited):
                    self._answer(
                        429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(fault.retry_after)}
                    )
                elif isinstance(fault, ServerError):
                    self._answer_text(fault.status, f"<html><body>{fault.status} from the edge</body></html>")
                elif isinstance(fault, ApiError):
                    answer: dict[str, Any] = {"ok": False, "error": fault.error}
                    if fault.needed is not None:
                        answer.update(needed=fault.needed, provided="chat:write")
                    self._answer(200, answer)
                elif isinstance(fault, KillClient):
                    fake._apply(method, token, params)
                    os.killpg(fault.process_group, signal.SIGKILL)
                    self.close_connection = True
                elif isinstance(fault, Timeout):
                    if fault.after_processing:
                        fake._apply(method, token, params)
                    fake._closing.wait(fault.seconds)
                    self.close_connection = True
                else:
                    self._answer(200, fake._apply(method, token, params))

            def _answer(
                self, status: int, answer: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                self._send(
                    status, json.dumps(answer).encode(), "application/json; charset=utf-8", headers or {}
                )

            def _answer_text(self, status: int, text: str) -> None:
                self._send(status, text.encode(), "text/html; charset=utf-8", {})

            def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first; nothing to tell it

        return Handler


def _flag(value: object) -> bool:
    """Slack's boolean parameters arrive as true/false (JSON) or "1"/"0"/"true" (form)."""
    return value is True or str(value).lower() in ("1", "true")


def _json_value(value: object) -> object:
    """Blocks and metadata arrive as JSON values in a JSON body, or as JSON text in a form body."""
    return json.loads(value) if isinstance(value, str) else value


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A running FakeSlack for one test."""
    with FakeSlack() as slack:
        yield slack
