# The Slack Web API calls of the approval flow: post a request once, find it again, read the decisions on it.
# Retries differ by kind of call, because a lost answer to a post does not mean the message was not posted.

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import (
    BackoffRetryIntervalCalculator,
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    Jitter,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryIntervalCalculator,
    RetryState,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.web import SlackResponse

from backfills.errors import BackfillsError, SlackConfigurationError, SlackUnavailableError

log = logging.getLogger(__name__)

# Where operators set the bot token; named in the messages that ask them to fix it.
TOKEN_SETTING = "SLACK_BOT_TOKEN"
# Slack message metadata event type that tags our approval requests, so find_request can recognise them.
REQUEST_EVENT_TYPE = "backfills_approval_request"
SLACK_API_URL = "https://slack.com/api/"
# Slack recommends at most 200 items per page on paginated methods.
PAGE_SIZE = 200

# Errors that retrying cannot fix: the setup is wrong. Each says what an operator should change.
_SETUP_PROBLEMS: dict[str, str] = {
    "not_authed": f"no bot token reached Slack; set {TOKEN_SETTING} to the app's Bot User OAuth Token",
    "invalid_auth": (
        f"the bot token in {TOKEN_SETTING} was rejected; set it to the Bot User OAuth Token (xoxb-…) of the "
        "app installed in this workspace"
    ),
    "token_revoked": f"the bot token in {TOKEN_SETTING} was revoked; reinstall the Slack app and update it",
    "token_expired": f"the bot token in {TOKEN_SETTING} has expired; issue a new one and update it",
    "account_inactive": (
        f"the bot token in {TOKEN_SETTING} belongs to a deactivated bot or an uninstalled app; reinstall the "
        "app and update the token"
    ),
    "not_allowed_token_type": (
        f"{TOKEN_SETTING} holds a token of the wrong type for {{method}}; use the app's Bot User OAuth "
        "Token (xoxb-…)"
    ),
    "no_permission": "the Slack app may not call {method} in this workspace; a workspace admin must allow it",
    "team_access_not_granted": "the Slack app is not installed in this workspace; install it there",
    "ekm_access_denied": "a workspace administrator has suspended the app's access to messages",
    "missing_scope": (
        "the bot token lacks the {needed} scope that {method} needs; add it under OAuth & Permissions in the "
        "Slack app's settings and reinstall the app"
    ),
    "channel_not_found": (
        "Slack has no channel {channel} that the bot can see; use the channel's ID (C…) and, for a private "
        "channel, invite the bot"
    ),
    "not_in_channel": "the bot is not a member of channel {channel}; invite it there (/invite @<app name>)",
    "is_archived": "channel {channel} is archived; unarchive it or choose another approvals channel",
    "user_not_found": "Slack has no user {user}; check the approver allowlist",
    "no_such_subteam": "Slack has no user group {usergroup}; check the approvers' user group ID (S…)",
}

# A Slack user ID as the Web API writes it: U… for a member, W… for an Enterprise Grid member.
_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")

# How a read that fails on the network looks: refused or reset connections (URLError, ConnectionError) and a
# response that never comes. urllib raises a read timeout as a bare TimeoutError, which slack_sdk's
# ConnectionErrorRetryHandler does not retry by default.
_NETWORK_ERRORS: tuple[type[Exception], ...] = (URLError, ConnectionError, TimeoutError, HTTPException)


def is_user_id(text: str) -> bool:
    """Whether `text` is written as a Slack user ID (U…, W…), rather than a name or an e-mail address."""
    return _USER_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class PostedMessage:
    """A message in Slack: its channel ID, its ts (Slack's ID for it) and, when Slack gave one, its link."""

    channel: str
    ts: str
    permalink: str | None


@dataclass(frozen=True)
class SlackReaction:
    """One person's reaction (e.g. "white_check_mark") on a message; one per user and reaction name."""

    user_id: str
    name: str


@dataclass(frozen=True)
class SlackReply:
    """A reply in a message's thread: from a person (user_id) or an app (bot_id, often with a user_id too)."""

    user_id: str | None
    bot_id: str | None
    text: str
    ts: str


@dataclass(frozen=True)
class SlackUser:
    """A workspace member as users.info describes them."""

    user_id: str
    display_name: str
    is_bot: bool
    deleted: bool


class SlackClient:
    """The Slack calls of the approval flow, over slack_sdk's WebClient, with Slack failures as named errors.

    Reads (history, replies, reactions, users, user groups, permalinks) retry rate limits (HTTP 429, after the
    Retry-After Slack sends), 5xx answers, timeouts and connection errors, up to `max_retries` retries in all
    (slack_sdk counts one budget across kinds), waiting `backoff`, then twice as long, and so on. A post
    retries only a rate limit, which Slack did not process: after a timeout, a dropped connection or a 5xx the
    message may be in Slack already, so `post` raises SlackUnavailableError and the caller looks with
    `find_request` before posting again.

    Raises SlackConfigurationError when the setup is wrong (token, scopes, channel, user group) and
    SlackUnavailableError when Slack cannot be reached or keeps failing. Neither message, nor this object's
    repr, contains the token. `sleep` is how retries wait (tests pass one that does not). A Retry-After longer
    than `longest_retry_after` seconds is not waited for: the call fails at once rather than hold up a sensor
    tick.
    """

    def __init__(
        self,
        token: str,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        longest_retry_after: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not token:
            raise SlackConfigurationError(
                f"no Slack bot token: set {TOKEN_SETTING} to the app's Bot User OAuth Token (xoxb-…)"
            )
        self._base_url = (base_url or SLACK_API_URL).rstrip("/") + "/"
        self._timeout = timeout
        self._max_retries = max_retries
        self._longest_retry_after = longest_retry_after
        interval = BackoffRetryIntervalCalculator(backoff_factor=backoff, jitter=_ProportionalJitter())
        rate_limits = _RateLimitRetry(max_retries, longest_wait=longest_retry_after, sleep=sleep)
        # Explicit handler lists: WebClient's default retries connection errors once, posts included, and a
        # reset connection may come after Slack has posted the message.
        self._writer = self._web_client(token, [rate_limits])
        self._reader = self._web_client(
            token,
            [
                rate_limits,
                _ServerErrorRetry(max_retries, interval, sleep=sleep),
                _NetworkErrorRetry(max_retries, interval, sleep=sleep),
            ],
        )
        self._users: dict[str, SlackUser] = {}
        self._ids_by_name: dict[str, frozenset[str]] | None = None

    def __repr__(self) -> str:
        return (
            f"SlackClient(base_url={self._base_url!r}, timeout={self._timeout}, "
            f"max_retries={self._max_retries})"
        )

    def check_auth(self) -> str:
        """Check the token with auth.test; return the bot's user ID (to recognise the bot's own messages)."""
        response = self._read("auth.test", self._reader.auth_test)
        return str(response["user_id"])

    def post(
        self,
        channel: str,
        text: str,
        blocks: list[dict] | None = None,
        *,
        thread_ts: str | None = None,
        request_id: str | None = None,
    ) -> PostedMessage:
        """Post a message (in the thread of `thread_ts` if given) and return where it is.

        With `request_id` the message carries it as Slack message metadata, so `find_request` can find the
        message again. SlackUnavailableError means the message may or may not be in Slack: call `find_request`
        before posting again. A permalink Slack does not give is None; the message is posted all the same.
        """
        params: dict[str, Any] = {"channel": channel, "text": text}
        if blocks:
            params["blocks"] = blocks
        if thread_ts:
            params["thread_ts"] = thread_ts
        if request_id:
            params["metadata"] = {
                "event_type": REQUEST_EVENT_TYPE,
                "event_payload": {"request_id": request_id},
            }
        response = self._call(
            "chat.postMessage",
            self._writer.chat_postMessage,
            params,
            unanswered="; not retried, as the message may be posted all the same: look for it with "
            "find_request before posting again",
        )
        posted_channel, ts = str(response["channel"]), str(response["ts"])
        return PostedMessage(channel=posted_channel, ts=ts, permalink=self._permalink(posted_channel, ts))

    def find_request(self, channel: str, request_id: str, *, oldest: float) -> PostedMessage | None:
        """The top-level message in `channel` posted with `request_id` since `oldest` (Unix seconds), or None.

        Pages through conversations.history; the caller uses it to avoid posting a request twice after a crash
        or a post whose outcome is unknown.
        """
        cursor: str | None = None
        while True:
            page = self._read(
                "conversations.history",
                self._reader.conversations_history,
                channel=channel,
                oldest=f"{oldest:.6f}",
                include_all_metadata=True,
                limit=PAGE_SIZE,
                cursor=cursor,
            )
            for message in page.get("messages") or []:
                if _request_id(message) == request_id:
                    ts = str(message["ts"])
                    return PostedMessage(channel=channel, ts=ts, permalink=self._permalink(channel, ts))
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None

    def reactions(self, channel: str, ts: str) -> list[SlackReaction]:
        """Every reaction on the message, one per user and reaction name, in the order Slack lists them."""
        response = self._read(
            "reactions.get", self._reader.reactions_get, channel=channel, timestamp=ts, full=True
        )
        found: dict[tuple[str, str], SlackReaction] = {}
        for reaction in (response.get("message") or {}).get("reactions") or []:
            for user_id in reaction.get("users") or []:
                found.setdefault(
                    (user_id, reaction["name"]), SlackReaction(user_id=user_id, name=reaction["name"])
                )
        return list(found.values())

    def replies(self, channel: str, ts: str) -> list[SlackReply]:
        """The replies in the thread of `ts`, oldest first; the parent message itself is not one of them."""
        found: list[SlackReply] = []
        cursor: str | None = None
        while True:
            page = self._read(
                "conversations.replies",
                self._reader.conversations_replies,
                channel=channel,
                ts=ts,
                limit=PAGE_SIZE,
                cursor=cursor,
            )
            found.extend(
                SlackReply(
                    user_id=message.get("user"),
                    bot_id=message.get("bot_id"),
                    text=message.get("text") or "",
                    ts=str(message["ts"]),
                )
                for message in page.get("messages") or []
                # Slack puts the parent first on every page.
                if message.get("ts") != ts
            )
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return found

    def user(self, user_id: str) -> SlackUser:
        """The workspace member `user_id` (users.info), asked once per SlackClient: make a client per check of
        decisions, so a deactivated user is seen at the next one."""
        if user_id not in self._users:
            response = self._read("users.info", self._reader.users_info, user=user_id)
            user = response["user"]
            profile = user.get("profile") or {}
            self._users[user_id] = SlackUser(
                user_id=str(user["id"]),
                display_name=profile.get("display_name")
                or profile.get("real_name")
                or user.get("name")
                or user_id,
                is_bot=bool(user.get("is_bot")),
                deleted=bool(user.get("deleted")),
            )
        return self._users[user_id]

    def user_id_by_email(self, email: str) -> str | None:
        """The user ID of the workspace member with this e-mail address (users.lookupByEmail), or None."""
        try:
            response = self._read("users.lookupByEmail", self._reader.users_lookupByEmail, email=email)
        except _NoSuchUser:
            return None
        return str(response["user"]["id"])

    def user_ids_named(self, name: str) -> frozenset[str]:
        """The IDs of the workspace members whose user name, display name or real name is exactly `name`.

        The member list (users.list) is read once per SlackClient, like `user`.
        """
        if self._ids_by_name is None:
            ids_by_name: dict[str, set[str]] = {}
            cursor: str | None = None
            while True:
                page = self._read("users.list", self._reader.users_list, limit=PAGE_SIZE, cursor=cursor)
                for member in page.get("members") or []:
                    profile = member.get("profile") or {}
                    for known_as in (
                        member.get("name"),
                        profile.get("display_name"),
                        profile.get("real_name"),
                    ):
                        if known_as:
                            ids_by_name.setdefault(known_as, set()).add(str(member["id"]))
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    break
            self._ids_by_name = {known_as: frozenset(ids) for known_as, ids in ids_by_name.items()}
        return self._ids_by_name.get(name, frozenset())

    def usergroup_members(self, usergroup_id: str) -> frozenset[str]:
        """The user IDs of the enabled members of a user group (e.g. the approvers' group)."""
        response = self._read(
            "usergroups.users.list", self._reader.usergroups_users_list, usergroup=usergroup_id
        )
        return frozenset(response.get("users") or [])

    # Internals

    def _web_client(self, token: str, retry_handlers: list[RetryHandler]) -> WebClient:
        return WebClient(
            token=token,
            base_url=self._base_url,
            timeout=self._timeout,  # type: ignore[arg-type]  # annotated int, but urllib takes float seconds
            retry_handlers=retry_handlers,
        )

    def _permalink(self, channel: str, ts: str) -> str | None:
        # The message exists whatever happens here: a missing link must not turn into a failed post.
        try:
            response = self._read(
                "chat.getPermalink", self._reader.chat_getPermalink, channel=channel, message_ts=ts
            )
        except BackfillsError as err:
            log.warning("Posted message %s in %s has no permalink: %s", ts, channel, err)
            return None
        return response.get("permalink")

    def _read(self, method: str, call: Callable[..., SlackResponse], **params: Any) -> SlackResponse:
        return self._call(method, call, params, unanswered=f", still after {self._max_retries} retries")

    def _call(
        self, method: str, call: Callable[..., SlackResponse], params: dict[str, Any], *, unanswered: str
    ) -> SlackResponse:
        """Make one Web API call; `unanswered` ends the message of a failure that may or may not have been
        processed (no answer, or a 5xx)."""
        failure: BackfillsError
        try:
            return call(**params)
        except SlackApiError as err:
            failure = self._refusal(method, err.response, params, unanswered=unanswered)
        except _NETWORK_ERRORS as err:
            failure = SlackUnavailableError(
                f"Slack {method} got no answer from {self._base_url} ({type(err).__name__}: {err})"
                + unanswered
            )
        # Raised here, outside the except clauses, so the SlackApiError is neither the cause nor the context
        # of ours: its response keeps the request headers, hence the bot token, for any traceback or report.
        raise failure

    def _refusal(
        self, method: str, response: SlackResponse, params: dict[str, Any], *, unanswered: str
    ) -> BackfillsError:
        error = str(response.get("error") or "") if isinstance(response.data, dict) else ""
        if response.status_code == 200 and error == "users_not_found":
            return _NoSuchUser(f"Slack {method}: no such user")
        if response.status_code == 200 and error in _SETUP_PROBLEMS:
            advice = _SETUP_PROBLEMS[error].format(
                method=method,
                needed=response.get("needed") or "(Slack did not say which)",
                channel=params.get("channel", "?"),
                user=params.get("user", "?"),
                usergroup=params.get("usergroup", "?"),
            )
            return SlackConfigurationError(f"{error}: {advice}")
        if response.status_code == 429:
            retry_after = _retry_after_seconds(response.headers)
            if retry_after > self._longest_retry_after:
                waited = f"longer than the {self._longest_retry_after:g} s this client waits"
            else:
                waited = f"still after {self._max_retries} retries"
            return SlackUnavailableError(
                f"Slack {method} is rate limited (HTTP 429, Retry-After {retry_after:g} s), {waited}; "
                "it was not carried out: try again later"
            )
        if response.status_code != 200:
            return SlackUnavailableError(
                f"Slack {method} failed with HTTP {response.status_code}{unanswered}"
            )
        return SlackUnavailableError(f"Slack {method} failed: {error or 'no error code in the answer'}")


class _NoSuchUser(BackfillsError):
    """A look-up found no workspace member: an answer, not a failure."""


class _ProportionalJitter(Jitter):
    """Adds up to half the wait: slack_sdk's RandomJitter adds up to a whole second whatever the wait."""

    def recalculate(self, duration: float) -> float:
        return duration * (1 + random.random() / 2)


def _wait_then_retry(state: RetryState, seconds: float, sleep: Callable[[float], None]) -> None:
    # What RetryHandler.prepare_for_next_attempt does, with an injectable sleep instead of time.sleep.
    state.next_attempt_requested = True
    sleep(seconds)
    state.increment_current_attempt()


class _RateLimitRetry(RateLimitErrorRetryHandler):
    """Retries HTTP 429 after Slack's Retry-After, up to `longest_wait` seconds (slack_sdk's own waits any
    Retry-After plus up to a second, through time.sleep)."""

    def __init__(self, max_retry_count: int, *, longest_wait: float, sleep: Callable[[float], None]) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.longest_wait = longest_wait
        self.sleep = sleep

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return (
            super()._can_retry(state=state, request=request, response=response, error=error)
            and response is not None
            and _retry_after_seconds(response.headers) <= self.longest_wait
        )

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        _wait_then_retry(state, _retry_after_seconds(response.headers if response else {}), self.sleep)


class _ServerErrorRetry(ServerErrorRetryHandler):
    """Retries every 5xx (slack_sdk's own retries only 500 and 503; Slack's edge also answers 502 and 504)."""

    def __init__(
        self, max_retry_count: int, interval: RetryIntervalCalculator, *, sleep: Callable[[float], None]
    ) -> None:
        super().__init__(max_retry_count=max_retry_count, interval_calculator=interval)
        self.sleep = sleep

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code >= 500

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        _wait_then_retry(
            state, self.interval_calculator.calculate_sleep_duration(state.current_attempt), self.sleep
        )


class _NetworkErrorRetry(ConnectionErrorRetryHandler):
    """slack_sdk's connection error handler, also retrying read timeouts (see _NETWORK_ERRORS)."""

    def __init__(
        self, max_retry_count: int, interval: RetryIntervalCalculator, *, sleep: Callable[[float], None]
    ) -> None:
        super().__init__(
            max_retry_count=max_retry_count, interval_calculator=interval, error_types=list(_NETWORK_ERRORS)
        )
        self.sleep = sleep

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        _wait_then_retry(
            state, self.interval_calculator.calculate_sleep_duration(state.current_attempt), self.sleep
        )


def _retry_after_seconds(headers: Any) -> float:
    """Seconds in a Retry-After header, whatever the case of its name; headers are str -> str or -> [str]."""
    for name, value in dict(headers or {}).items():
        if name.lower() == "retry-after":
            value = value[0] if isinstance(value, list | tuple) else value
            try:
                return max(float(value), 0.0)
            except ValueError:
                break
    return 1.0


def _request_id(message: dict[str, Any]) -> str | None:
    metadata = message.get("metadata") or {}
    if metadata.get("event_type") != REQUEST_EVENT_TYPE:
        return None
    return (metadata.get("event_payload") or {}).get("request_id")
