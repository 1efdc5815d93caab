"""The life of a batch: its states, which state may follow which, and what each state allows.

One table decides every state change; the catalog enforces it wherever a batch manifest is written, so no
caller can move a batch where the table does not lead. The values are the strings manifests have always
stored, so catalogs written before this module read back unchanged.
"""

from __future__ import annotations

from enum import StrEnum

from backfills.errors import IllegalTransitionError, InvalidRequestError


class BatchState(StrEnum):
    """Where a batch is in its life.

    - `staging`, `checked`, `blocked`: derived from its check verdicts while its runs write partitions.
    - `approved`, `rejected`: decided by the approval flow (the policy's outcome on its request).
    - `canary`: its release serves a slice of entities (a canary release), production serves the rest.
    - `promoted`: its release became production (directly, or by completing its canary).
    - `rolled_back`: it was exposed (canary or production) and a rollback took it away: its canary was
      removed, or a rollback release left production serving none of its partitions. A rollback to a
      release that serves it again makes it `promoted` again.
    """

    STAGING = "staging"
    CHECKED = "checked"
    BLOCKED = "blocked"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANARY = "canary"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"

    @property
    def accepts_partitions(self) -> bool:
        """Whether runs may still stage partitions (and record check verdicts) into the batch; a decision
        seals it."""
        return self in _WRITABLE

    @property
    def promotable(self) -> bool:
        """Whether promotion (straight to production or to a canary) may consider the batch: every blocking
        check passed (its approval is verified separately)."""
        return self in (BatchState.CHECKED, BatchState.APPROVED)

    @property
    def settled(self) -> bool:
        """Whether the approval flow has nothing left to do for the batch: rejected, or published (to a
        canary or to production) and perhaps rolled back since."""
        return self in (BatchState.REJECTED, BatchState.CANARY, BatchState.PROMOTED, BatchState.ROLLED_BACK)

    def may_become(self, other: BatchState) -> bool:
        """Whether the table allows a change from this state to `other` (staying put is always allowed)."""
        return other == self or other in TRANSITIONS[self]


_WRITABLE = frozenset({BatchState.STAGING, BatchState.CHECKED, BatchState.BLOCKED})

# Every state change a batch may make; anything else is refused. Staying in a state is not a change.
TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    BatchState.STAGING: frozenset({BatchState.CHECKED, BatchState.BLOCKED}),
    BatchState.BLOCKED: frozenset({BatchState.STAGING, BatchState.CHECKED}),
    BatchState.CHECKED: frozenset(
        {
            BatchState.STAGING,  # a run stages more partitions that have no verdicts yet
            BatchState.BLOCKED,
            BatchState.APPROVED,
            BatchState.REJECTED,
            # Promotion re-judges the approval; a batch whose approval was recorded but not yet sealed
            # (a crash in between) is promoted from `checked`.
            BatchState.CANARY,
            BatchState.PROMOTED,
        }
    ),
    BatchState.APPROVED: frozenset({BatchState.CANARY, BatchState.PROMOTED}),
    BatchState.REJECTED: frozenset(),
    BatchState.CANARY: frozenset({BatchState.PROMOTED, BatchState.ROLLED_BACK}),
    BatchState.PROMOTED: frozenset({BatchState.ROLLED_BACK}),
    BatchState.ROLLED_BACK: frozenset({BatchState.PROMOTED}),
}


def check_transition(batch_id: str, before: BatchState, after: BatchState | str) -> BatchState:
    """The state `after` names, if the table allows the batch to go there from `before`; otherwise an error
    naming the batch, both states and where it may go instead."""
    try:
        target = BatchState(after)
    except ValueError:
        raise InvalidRequestError(
            f"batch {batch_id} cannot become {after!r}: not a batch state (one of "
            f"{', '.join(BatchState)}); nothing was changed"
        ) from None
    if before.may_become(target):
        return target
    allowed = sorted(TRANSITIONS[before])
    onward = f"from {before} it may become {', '.join(allowed)}" if allowed else f"{before} is final"
    raise IllegalTransitionError(
        f"batch {batch_id} cannot go from {before} to {target}: {onward}; nothing was changed"
    )
