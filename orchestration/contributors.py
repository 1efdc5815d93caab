"""Who wrote into a batch, as the approval policy must see them: user IDs of the approvals channel.

Four-eyes would trust a free-text tag if it compared the requester tag with the voter: whoever reruns
partitions into someone else's batch could approve it, and a display name where a user ID is expected never
matches anyone. So every run's requester tag is a contributor, each tag is resolved to a user ID by the
channel, and a tag that resolves to no one counts as unknown (one more approval). No Slack calls here: the
channel resolves, the request records what it resolved, and this module turns that into `RequestFacts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TypeGuard

from backfills.orchestration.approval_policy import RequestFacts
from backfills.resources.catalog_models import BatchManifest

UNTAGGED = "a run without a backfills/requester tag"


def _named(tag: str | None) -> TypeGuard[str]:
    """Whether a requester tag names anyone: a run without the tag, or with a blank one, names no one."""
    return tag is not None and tag.strip() != ""


def contributor_tags(batch: BatchManifest) -> list[str]:
    """The requester tags of everyone who wrote into the batch, requester first, once each."""
    return [tag for tag in dict.fromkeys([batch.requester, *batch.contributors]) if _named(tag)]


def request_facts(
    batch: BatchManifest,
    requested_at: datetime,
    identities: Mapping[str, str | None] | None,
    *,
    superseded_by: str | None = None,
) -> RequestFacts:
    """The facts the policy judges a request on, with every contributor as the user ID `identities` resolves
    their tag to. A tag missing from `identities`, or resolved to None, is unknown, and is also refused as
    written; `identities` None (a request made before contributors were resolved) takes tags as user IDs."""

    def resolve(tag: str) -> str | None:
        return tag if identities is None else identities.get(tag)

    requester = resolve(batch.requester) if _named(batch.requester) else None
    contributors: set[str] = set()
    unknown: list[str] = [] if all(map(_named, batch.contributors)) else [UNTAGGED]
    for tag in contributor_tags(batch):
        user = resolve(tag)
        if user is None:
            unknown.append(f'"{tag}"')
        contributors.add(user or tag)
    return RequestFacts(
        batch_id=batch.batch_id,
        requester=requester,
        requested_at=requested_at,
        superseded_by=superseded_by,
        contributors=frozenset(contributors - {requester}),
        unknown_contributors=tuple(unknown),
    )
