"""The Slack layer of approvals, through the real slack_sdk client over HTTP against FakeSlack."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator

import pytest
from slack_api import ApiError, FakeSlack, RateLimited, ServerError, Timeout

from backfills.errors import SlackConfigurationError, SlackUnavailableError
from backfills.orchestration.approval_channels import SlackChannel
from backfills.resources.slack import (
    REQUEST_EVENT_TYPE,
    PostedMessage,
    SlackClient,
    SlackReaction,
    SlackReply,
    SlackUser,
)

CHANNEL = "C0APPROVALS"
ALICE, BOB, CAROL = "U0ALICE", "U0BOB", "U0CAROL"
# Longer than the client's timeout below; FakeSlack cuts the wait short when it closes.
NO_ANSWER = 5.0
CLIENT_TIMEOUT = 0.5

Read = Callable[[SlackClient, PostedMessage], object]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_channel(CHANNEL, "feature-approvals")
        fake.add_user(ALICE, "Alice")
        fake.add_user(BOB, "Bob")
        yield fake


@pytest.fixture
def waits() -> list[float]:
    """Every wait a client asked for between retries; nothing actually sleeps."""
    return []


@pytest.fixture
def client(slack: FakeSlack, waits: list[float]) -> SlackClient:
    return SlackClient(
        slack.token,
        base_url=slack.base_url,
        timeout=CLIENT_TIMEOUT,
        max_retries=3,
        backoff=0.01,
        sleep=waits.append,
    )


# Posting a request exactly once


def test_request_posted_with_its_id_is_found_again(slack: FakeSlack, client: SlackClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Batch 9f2c* needs 2 approvals"}}]

    posted = client.post(CHANNEL, "Batch 9f2c needs 2 approvals", blocks, request_id="batch-9f2c")

    [message] = slack.messages(CHANNEL)
    assert message["ts"] == posted.ts and message["blocks"] == blocks
    assert message["metadata"] == {
        "event_type": REQUEST_EVENT_TYPE,
        "event_payload": {"request_id": "batch-9f2c"},
    }
    assert posted.channel == CHANNEL and posted.permalink and posted.ts.replace(".", "") in posted.permalink
    assert client.find_request(CHANNEL, "batch-9f2c", oldest=0) == posted


def test_request_is_found_among_many_pages_of_history(slack: FakeSlack, client: SlackClient) -> None:
    slack.max_page_size = 2
    posted = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")
    for number in range(5):
        client.post(CHANNEL, f"Batch {number} needs approval", request_id=f"batch-{number}")

    assert client.find_request(CHANNEL, "batch-9f2c", oldest=0) == posted
    history = slack.calls_of("conversations.history")
    assert len(history) == 3 and all(call["include_all_metadata"] in ("1", True) for call in history)


def test_request_never_posted_or_older_than_the_window_is_not_found(
    slack: FakeSlack, client: SlackClient
) -> None:
    posted = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")
    client.post(CHANNEL, "An announcement without a request id")

    assert client.find_request(CHANNEL, "batch-7a1b", oldest=0) is None
    assert client.find_request(CHANNEL, "batch-9f2c", oldest=float(posted.ts)) is None


def test_post_whose_answer_is_lost_is_not_repeated_and_is_found_afterwards(
    slack: FakeSlack, client: SlackClient
) -> None:
    slack.inject("chat.postMessage", Timeout(NO_ANSWER, after_processing=True))

    with pytest.raises(SlackUnavailableError, match="chat.postMessage.*find_request"):
        client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")

    assert len(slack.calls_of("chat.postMessage")) == 1
    [message] = slack.messages(CHANNEL)
    found = client.find_request(CHANNEL, "batch-9f2c", oldest=0)
    assert found is not None and found.ts == message["ts"]


def test_post_lost_before_slack_processed_it_leaves_nothing_to_find(
    slack: FakeSlack, client: SlackClient
) -> None:
    slack.inject("chat.postMessage", Timeout(NO_ANSWER, after_processing=False))

    with pytest.raises(SlackUnavailableError):
        client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")

    assert slack.messages(CHANNEL) == []
    assert client.find_request(CHANNEL, "batch-9f2c", oldest=0) is None


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_post_answered_with_a_server_error_is_not_retried(
    slack: FakeSlack, client: SlackClient, status: int
) -> None:
    slack.inject("chat.postMessage", ServerError(status))

    with pytest.raises(
        SlackUnavailableError, match=f"chat.postMessage failed with HTTP {status}; not retried"
    ):
        client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")

    assert len(slack.calls_of("chat.postMessage")) == 1


def test_rate_limited_post_waits_as_slack_asks_and_posts_once(
    slack: FakeSlack, client: SlackClient, waits: list[float]
) -> None:
    slack.inject("chat.postMessage", RateLimited(retry_after=2))

    posted = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")

    assert [message["ts"] for message in slack.messages(CHANNEL)] == [posted.ts]
    assert len(slack.calls_of("chat.postMessage")) == 2
    assert waits == [2.0]


def test_post_rate_limited_for_longer_than_a_sensor_tick_fails_without_waiting(
    slack: FakeSlack, waits: list[float]
) -> None:
    client = SlackClient(slack.token, base_url=slack.base_url, longest_retry_after=30, sleep=waits.append)
    slack.inject("chat.postMessage", RateLimited(retry_after=120))

    with pytest.raises(SlackUnavailableError, match="rate limited .*Retry-After 120 s.*not carried out"):
        client.post(CHANNEL, "Batch 9f2c needs approval")

    assert waits == [] and slack.messages(CHANNEL) == []


def test_posted_message_without_a_permalink_is_still_posted(slack: FakeSlack, client: SlackClient) -> None:
    slack.inject("chat.getPermalink", *[ServerError(503)] * 4)

    posted = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")

    assert posted.permalink is None
    assert [message["ts"] for message in slack.messages(CHANNEL)] == [posted.ts]


def test_outcome_is_posted_in_the_request_thread(slack: FakeSlack, client: SlackClient) -> None:
    request = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")

    outcome = client.post(CHANNEL, "Promoted as release r-42", thread_ts=request.ts)

    assert [reply["ts"] for reply in slack.thread(CHANNEL, request.ts)] == [outcome.ts]
    assert len(slack.messages(CHANNEL)) == 1


# Reading decisions despite a flaky Slack


@pytest.mark.parametrize(
    ("method", "read"),
    [
        ("auth.test", lambda client, request: client.check_auth()),
        (
            "conversations.history",
            lambda client, request: client.find_request(CHANNEL, "batch-9f2c", oldest=0),
        ),
        ("conversations.replies", lambda client, request: client.replies(CHANNEL, request.ts)),
        ("reactions.get", lambda client, request: client.reactions(CHANNEL, request.ts)),
        ("users.info", lambda client, request: client.user(ALICE)),
        ("usergroups.users.list", lambda client, request: client.usergroup_members("S0APPROVERS")),
    ],
)
def test_reads_ride_out_rate_limits_and_server_errors(
    slack: FakeSlack, client: SlackClient, waits: list[float], method: str, read: Read
) -> None:
    slack.add_usergroup("S0APPROVERS", [ALICE, BOB])
    request = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")
    expected = read(client, request)
    client = SlackClient(slack.token, base_url=slack.base_url, backoff=0.01, sleep=waits.append)
    slack.inject(method, RateLimited(retry_after=1), ServerError(502))

    assert read(client, request) == expected
    assert waits[0] == 1.0 and len(waits) == 2


def test_reads_ride_out_timeouts(slack: FakeSlack, client: SlackClient) -> None:
    request = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")
    slack.react(CHANNEL, request.ts, ALICE, "white_check_mark")
    slack.inject("reactions.get", Timeout(NO_ANSWER), Timeout(NO_ANSWER, after_processing=True))

    assert client.reactions(CHANNEL, request.ts) == [SlackReaction(ALICE, "white_check_mark")]
    assert len(slack.calls_of("reactions.get")) == 3


def test_slack_failing_after_every_retry_is_unavailable_naming_the_method(
    slack: FakeSlack, client: SlackClient, waits: list[float]
) -> None:
    request = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")
    slack.inject("conversations.replies", *[ServerError(503)] * 4)

    with pytest.raises(
        SlackUnavailableError, match="conversations.replies failed with HTTP 503, still after 3"
    ):
        client.replies(CHANNEL, request.ts)

    assert len(slack.calls_of("conversations.replies")) == 4
    # Backoff doubles (with up to half again of jitter): 0.01, 0.02, 0.04.
    assert len(waits) == 3 and waits[0] < waits[1] < waits[2] <= 0.06


def test_unreachable_slack_is_unavailable(waits: list[float]) -> None:
    with FakeSlack() as gone:
        base_url = gone.base_url
    client = SlackClient(
        "xoxb-anything", base_url=base_url, timeout=CLIENT_TIMEOUT, backoff=0.01, sleep=waits.append
    )

    with pytest.raises(SlackUnavailableError, match="users.info got no answer"):
        client.user(ALICE)

    assert len(waits) == 3


# Setup problems an operator must fix, and the token kept secret


def test_rejected_token_is_a_setup_problem_that_never_shows_the_token(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_token = "xoxb-0000-wrong-secret-token"
    client = SlackClient(wrong_token, base_url=slack.base_url, timeout=CLIENT_TIMEOUT)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(
        SlackConfigurationError, match="invalid_auth: the bot token in SLACK_BOT_TOKEN"
    ) as raised:
        client.check_auth()

    report = "".join(traceback.format_exception(raised.value))
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    assert wrong_token not in report and wrong_token not in repr(client) and wrong_token not in caplog.text


def test_failures_with_a_valid_token_never_show_it(
    slack: FakeSlack, client: SlackClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    slack.inject("chat.postMessage", ApiError("token_revoked"), ServerError(503))
    reports = []
    for _ in range(2):
        with pytest.raises((SlackConfigurationError, SlackUnavailableError)) as raised:
            client.post(CHANNEL, "Batch 9f2c needs approval")
        reports.append("".join(traceback.format_exception(raised.value)))

    assert "token_revoked" in reports[0] and "HTTP 503" in reports[1]
    assert all(slack.token not in report for report in reports)
    assert slack.token not in caplog.text and slack.token not in repr(client)


def test_missing_scope_names_the_scope_to_add(slack: FakeSlack, client: SlackClient) -> None:
    request = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")
    slack.inject("reactions.get", ApiError("missing_scope", needed="reactions:read"))

    with pytest.raises(
        SlackConfigurationError, match="lacks the reactions:read scope that reactions.get needs"
    ):
        client.reactions(CHANNEL, request.ts)

    assert len(slack.calls_of("reactions.get")) == 1


def test_unknown_channel_names_the_channel_to_fix(client: SlackClient) -> None:
    with pytest.raises(SlackConfigurationError, match="channel_not_found: .*C0NOWHERE"):
        client.post("C0NOWHERE", "Batch 9f2c needs approval")


def test_bot_outside_the_channel_is_told_to_be_invited(slack: FakeSlack, client: SlackClient) -> None:
    slack.inject("chat.postMessage", ApiError("not_in_channel"))

    with pytest.raises(SlackConfigurationError, match=f"not a member of channel {CHANNEL}; invite"):
        client.post(CHANNEL, "Batch 9f2c needs approval")


def test_missing_token_is_a_setup_problem_before_any_call() -> None:
    with pytest.raises(SlackConfigurationError, match="SLACK_BOT_TOKEN"):
        SlackClient("")


# Reading decisions back


def test_check_auth_returns_the_bot_user(slack: FakeSlack, client: SlackClient) -> None:
    assert client.check_auth() == slack.bot_user_id


def test_reactions_are_read_back_one_per_person_and_name(slack: FakeSlack, client: SlackClient) -> None:
    request = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")
    slack.react(CHANNEL, request.ts, ALICE, "white_check_mark")
    slack.react(CHANNEL, request.ts, BOB, "white_check_mark")
    slack.react(CHANNEL, request.ts, ALICE, "x")
    slack.react(CHANNEL, request.ts, ALICE, "white_check_mark")

    assert client.reactions(CHANNEL, request.ts) == [
        SlackReaction(ALICE, "white_check_mark"),
        SlackReaction(BOB, "white_check_mark"),
        SlackReaction(ALICE, "x"),
    ]
    assert slack.calls_of("reactions.get")[0]["full"] in ("1", True)


def test_message_without_reactions_has_none(client: SlackClient) -> None:
    request = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")

    assert client.reactions(CHANNEL, request.ts) == []


def test_thread_replies_are_read_back_without_the_request_itself(
    slack: FakeSlack, client: SlackClient
) -> None:
    slack.max_page_size = 2
    request = client.post(CHANNEL, "Batch 9f2c needs approval", request_id="batch-9f2c")
    approve = slack.reply(CHANNEL, request.ts, ALICE, "approve")
    noted = client.post(CHANNEL, "Alice approved (1 of 2)", thread_ts=request.ts)
    from_app = slack.reply(CHANNEL, request.ts, CAROL, "approve", bot_id="B0OTHERAPP")

    assert client.replies(CHANNEL, request.ts) == [
        SlackReply(user_id=ALICE, bot_id=None, text="approve", ts=approve),
        SlackReply(
            user_id=slack.bot_user_id, bot_id=slack.bot_id, text="Alice approved (1 of 2)", ts=noted.ts
        ),
        SlackReply(user_id=CAROL, bot_id="B0OTHERAPP", text="approve", ts=from_app),
    ]
    assert len(slack.calls_of("conversations.replies")) == 2


def test_people_are_looked_up_once_per_client(slack: FakeSlack, client: SlackClient) -> None:
    slack.add_user(CAROL, "Carol", deleted=True)

    assert client.user(ALICE) == SlackUser(ALICE, "Alice", is_bot=False, deleted=False)
    assert client.user(ALICE) == SlackUser(ALICE, "Alice", is_bot=False, deleted=False)
    assert client.user(CAROL).deleted
    assert client.user(slack.bot_user_id).is_bot
    assert [call["user"] for call in slack.calls_of("users.info")] == [ALICE, CAROL, slack.bot_user_id]


def test_unknown_person_is_a_setup_problem_naming_them(client: SlackClient) -> None:
    with pytest.raises(SlackConfigurationError, match="user_not_found: Slack has no user U0NOBODY"):
        client.user("U0NOBODY")


def test_approvers_user_group_members_are_read(slack: FakeSlack, client: SlackClient) -> None:
    slack.add_usergroup("S0APPROVERS", [ALICE, BOB])

    assert client.usergroup_members("S0APPROVERS") == frozenset({ALICE, BOB})
    with pytest.raises(SlackConfigurationError, match="no user group S0NOGROUP"):
        client.usergroup_members("S0NOGROUP")


# Who wrote into a batch, as Slack user IDs


def test_requester_tags_resolve_to_slack_user_ids_or_to_no_one(slack: FakeSlack, client: SlackClient) -> None:
    slack.max_page_size = 2  # the member list comes in pages
    slack.add_user(CAROL, "carol", real_name="Carol Smith", email="carol@example.com")
    slack.add_user("U0CAROLJ", "cj", real_name="Carol Jones")
    slack.add_user("U0CAROLJ2", "Carol Jones")  # a display name that is another member's real name
    tags = [
        BOB,  # a user ID is itself
        "W0GRIDUSER",  # so is an Enterprise Grid one, without a look-up
        "Carol@Example.com",  # an e-mail address, looked up
        "nobody@example.com",
        "Carol Smith",  # a real name, exactly one member's
        "Alice",  # a display name
        "Carol Jones",  # two members: ambiguous
        "carol smith",  # not exactly any name
    ]

    resolved = SlackChannel(client, CHANNEL).approver_ids(tags)

    assert resolved == {
        BOB: BOB,
        "W0GRIDUSER": "W0GRIDUSER",
        "Carol@Example.com": CAROL,
        "nobody@example.com": None,
        "Carol Smith": CAROL,
        "Alice": ALICE,
        "Carol Jones": None,
        "carol smith": None,
    }
    assert len(slack.calls_of("users.lookupByEmail")) == 2
    assert len(slack.calls_of("users.list")) == 3  # 6 members in pages of 2, read once for every name
    assert slack.calls_of("users.info") == []


def test_looking_up_e_mail_addresses_without_the_scope_names_the_scope_to_add(
    slack: FakeSlack, client: SlackClient
) -> None:
    slack.inject("users.lookupByEmail", ApiError("missing_scope", needed="users:read.email"))

    with pytest.raises(SlackConfigurationError, match="lacks the users:read.email scope"):
        SlackChannel(client, CHANNEL).approver_ids(["carol@example.com"])
