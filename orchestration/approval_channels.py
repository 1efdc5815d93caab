"""Where approval requests are posted and votes are read: Slack (reactions and thread replies on the request
message), or, without Slack, the local channel (`backfills approve/reject`, for local use only).

A channel only carries messages and reads what people did; the approval policy decides what it means.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from dagster import ConfigurableResource
from pydantic import Field

from backfills.orchestration.approval_message import ChannelMessage, Links
from backfills.orchestration.approval_policy import ApprovalRules
from backfills.orchestration.decision_grammar import reaction_decision, read_reply
from backfills.resources.catalog_models import ApprovalRequest, NotAVote, VoteRecord
from backfills.resources.slack import SlackClient, SlackReply, is_user_id

LOCAL_ONLY = "local approval channel (for local use only: set SLACK_BOT_TOKEN and BACKFILLS_SLACK_CHANNEL"
LOCAL_ONLY += " to take approvals in Slack)"
# How much of a reply that is not a vote is kept in the request and the audit trail.
NOT_A_VOTE_TEXT_LIMIT = 200

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostedRequest:
    """Where a request message is: the Slack channel and message ts, and its permalink (None locally)."""

    slack_channel: str | None
    ts: str | None
    permalink: str | None


@dataclass(frozen=True)
class ChannelReading:
    """What people did on a request: their votes, and the replies that name a decision but are not votes."""

    votes: list[VoteRecord]
    not_votes: list[NotAVote]


class ApprovalChannel(Protocol):
    kind: Literal["slack", "local"]

    def post_request(self, request: ApprovalRequest, message: ChannelMessage) -> PostedRequest:
        """Post the request; a failure may leave it posted all the same (then `find_request` finds it)."""

    def find_request(self, request: ApprovalRequest) -> PostedRequest | None:
        """The already posted message of the request, if any."""

    def read_votes(self, request: ApprovalRequest, now: datetime) -> ChannelReading:
        """Every approve or reject cast on the request so far (a vote with no time of its own gets `now`), and
        every reply by a person that names a decision without being a vote."""

    def reply(self, request: ApprovalRequest, text: str) -> None:
        """Tell the request's thread (an outcome, a promotion)."""

    def announce(self, message: ChannelMessage) -> None:
        """A message of its own in the channel (a blocked batch, a rollback)."""

    def approver_ids(self, tags: Iterable[str]) -> dict[str, str | None]:
        """The user ID of this channel that each requester tag written on a batch stands for; None for a
        tag that stands for no one, or for more than one."""


class LocalChannel:
    """Requests and outcomes go to the log (the CLI prints them); votes are those of `backfills approve`."""

    kind: Literal["local"] = "local"

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.say = say or log.info

    def post_request(self, request: ApprovalRequest, message: ChannelMessage) -> PostedRequest:
        self.say(f"[{LOCAL_ONLY}]\n{message.text}")
        return PostedRequest(None, None, None)

    def find_request(self, request: ApprovalRequest) -> PostedRequest | None:
        # Nothing leaves this process, so there is nothing to find: the request record is the message.
        return None

    def read_votes(self, request: ApprovalRequest, now: datetime) -> ChannelReading:
        return ChannelReading(votes=list(request.cli_votes), not_votes=[])

    def reply(self, request: ApprovalRequest, text: str) -> None:
        self.say(f"[local approvals] batch {request.batch_id}: {text}")

    def announce(self, message: ChannelMessage) -> None:
        self.say(f"[local approvals] {message.text}")

    def approver_ids(self, tags: Iterable[str]) -> dict[str, str | None]:
        # `backfills approve --as USER` names people as they are written: a tag is its own identity.
        return {tag: tag for tag in tags}


class SlackChannel:
    """An approvals channel in Slack, read and written through the bot token."""

    kind: Literal["slack"] = "slack"

    def __init__(self, client: SlackClient, channel: str) -> None:
        self.client = client
        self.channel = channel

    def post_request(self, request: ApprovalRequest, message: ChannelMessage) -> PostedRequest:
        posted = self.client.post(self.channel, message.text, message.blocks, request_id=request.request_id)
        return PostedRequest(posted.channel, posted.ts, posted.permalink)

    def find_request(self, request: ApprovalRequest) -> PostedRequest | None:
        posted = self.client.find_request(
            self.channel, request.request_id, oldest=request.created_at.timestamp() - 60
        )
        return None if posted is None else PostedRequest(posted.channel, posted.ts, posted.permalink)

    def read_votes(self, request: ApprovalRequest, now: datetime) -> ChannelReading:
        channel, ts = request.slack_channel or self.channel, request.message_ts
        if ts is None:
            return ChannelReading(votes=[], not_votes=[])
        votes: list[VoteRecord] = []
        not_votes: list[NotAVote] = []
        for reaction in self.client.reactions(channel, ts):
            decision = reaction_decision(reaction.name)
            if decision is not None:
                # Slack does not say when a reaction was added: it counts from when it was first seen.
                votes.append(self._vote(reaction.user_id, decision, now, "reaction", request.permalink))
        for reply in self.client.replies(channel, ts):
            reading = read_reply(reply.text)
            decision = reading.decision
            at = datetime.fromtimestamp(float(reply.ts), tz=UTC)
            if decision is None:
                not_vote = self._not_a_vote(reply, at, reading.not_a_vote_because, request)
                if not_vote is not None:
                    not_votes.append(not_vote)
                continue
            if reply.user_id is None:  # an app or a workflow posting without a user: never a person's vote
                name = reply.bot_id or "unknown app"
                votes.append(VoteRecord(user_id=name, decision=decision, at=at, source="reply", is_bot=True))
                continue
            vote = self._vote(reply.user_id, decision, at, "reply", request.permalink)
            votes.append(vote.model_copy(update={"is_bot": True}) if reply.bot_id else vote)
        return ChannelReading(votes=votes, not_votes=not_votes)

    def _not_a_vote(
        self, reply: SlackReply, at: datetime, reason: str | None, request: ApprovalRequest
    ) -> NotAVote | None:
        """The record of a person's reply that names a decision but is not a vote (`reason` says why). None
        for chatter (no reason), and for apps and bots, this one's notices included: their replies never
        count whatever they say."""
        if reason is None or reply.user_id is None or reply.bot_id is not None:
            return None
        user = self.client.user(reply.user_id)
        if user.is_bot:
            return None
        text = reply.text.strip()
        if len(text) > NOT_A_VOTE_TEXT_LIMIT:
            text = text[: NOT_A_VOTE_TEXT_LIMIT - 1] + "…"
        return NotAVote(
            user_id=reply.user_id,
            display_name=user.display_name,
            text=text,
            at=at,
            permalink=request.permalink,
            reason=reason,
        )

    def _vote(
        self, user_id: str, decision: str, at: datetime, source: str, permalink: str | None
    ) -> VoteRecord:
        user = self.client.user(user_id)
        return VoteRecord(
            user_id=user_id,
            display_name=user.display_name,
            decision=decision,
            at=at,
            source=source,
            is_bot=user.is_bot,
            deactivated=user.deleted,
            permalink=permalink,
        )

    def reply(self, request: ApprovalRequest, text: str) -> None:
        if request.message_ts is not None:
            self.client.post(request.slack_channel or self.channel, text, thread_ts=request.message_ts)

    def announce(self, message: ChannelMessage) -> None:
        self.client.post(self.channel, message.text, message.blocks)

    def approver_ids(self, tags: Iterable[str]) -> dict[str, str | None]:
        """A user ID (U…, W…) is itself; an e-mail address is looked up (users.lookupByEmail); any other
        text must be exactly the user name, display name or real name of one member (users.list)."""
        return {tag: self._user_id(tag.strip()) for tag in tags}

    def _user_id(self, written: str) -> str | None:
        if is_user_id(written):
            return written
        if "@" in written:
            return self.client.user_id_by_email(written)
        named = self.client.user_ids_named(written)
        return next(iter(named)) if len(named) == 1 else None


class ApprovalsResource(ConfigurableResource):
    """The approvals channel and rules: Slack when a bot token is configured, else the local channel."""

    slack_bot_token: str | None = Field(default=None, description="Slack bot token (from SLACK_BOT_TOKEN).")
    slack_channel: str | None = Field(default=None, description="Channel ID for approval requests.")
    slack_api_url: str | None = Field(default=None, description="Slack Web API base URL (tests, proxies).")
    approvers: list[str] = Field(default=[], description="User IDs allowed to approve.")
    approver_group: str | None = Field(
        default=None, description="Slack user group whose members may approve."
    )
    quorum: int = Field(
        default=1, description="Approvals needed (one more when anyone who wrote into the batch is unknown)."
    )
    expiry_hours: float = Field(default=72.0, description="Hours a request stays open.")
    rollback_requires_approval: bool = Field(default=False, description="Whether rollback needs approvers.")
    dagster_url: str = Field(default="http://127.0.0.1:3000", description="Base URL of the Dagster UI.")

    def slack(self) -> SlackClient | None:
        if not self.slack_bot_token:
            return None
        return SlackClient(self.slack_bot_token, base_url=self.slack_api_url)

    def channel(self, say: Callable[[str], None] | None = None) -> ApprovalChannel:
        client = self.slack()
        if client is None or not self.slack_channel:
            return LocalChannel(say)
        return SlackChannel(client, self.slack_channel)

    def rules(self) -> ApprovalRules:
        """The allowlist (IDs plus the user group's members, read from Slack), quorum and expiry."""
        approvers = set(self.approvers)
        client = self.slack()
        if self.approver_group and client is not None:
            approvers |= client.usergroup_members(self.approver_group)
        return ApprovalRules(
            approvers=frozenset(approvers),
            quorum=self.quorum,
            expires_after=timedelta(hours=self.expiry_hours),
        )

    def links(self) -> Links:
        return Links(self.dagster_url)
