"""Approval requests in the catalog store: one object per batch content, changed only by compare-and-swap.

A request is keyed by batch and fingerprint, so a batch whose content changes gets a new request and an
approval can never carry over to content nobody saw.
"""

from __future__ import annotations

from collections.abc import Callable

from backfills.errors import ApprovalNotFoundError, ObjectExistsError
from backfills.resources.cas import dump, update_object
from backfills.resources.catalog_models import ApprovalRequest
from backfills.resources.storage import ObjectStore

APPROVALS_PREFIX = "catalog/approvals"
NOTICES_PREFIX = "catalog/notices"


def request_id_for(batch_id: str, fingerprint: str) -> str:
    return f"{batch_id}.{fingerprint[:16]}"


class ApprovalStore:
    """Approval requests of one storage root."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def _key(batch_id: str, request_id: str) -> str:
        return f"{APPROVALS_PREFIX}/{batch_id}/{request_id}.json"

    def create(self, request: ApprovalRequest) -> bool:
        """Store a new request; False (and nothing written) if it already exists."""
        try:
            self.store.put_if_absent(self._key(request.batch_id, request.request_id), dump(request))
        except ObjectExistsError:
            return False
        return True

    def get(self, batch_id: str, request_id: str) -> ApprovalRequest:
        key = self._key(batch_id, request_id)
        if not self.store.exists(key):
            raise ApprovalNotFoundError(self._missing(batch_id, request_id))
        return ApprovalRequest.model_validate_json(self.store.get(key))

    def for_batch(self, batch_id: str) -> list[ApprovalRequest]:
        """Every request of a batch, oldest first."""
        requests = [
            ApprovalRequest.model_validate_json(self.store.get(key))
            for key in self.store.list(f"{APPROVALS_PREFIX}/{batch_id}")
            if key.endswith(".json")
        ]
        return sorted(requests, key=lambda request: (request.created_at, request.request_id))

    def latest(self, batch_id: str) -> ApprovalRequest:
        """The newest request of a batch; ApprovalNotFoundError when it was never requested."""
        requests = self.for_batch(batch_id)
        if not requests:
            raise ApprovalNotFoundError(
                f"batch {batch_id} has no approval request under {self.store.root}/{APPROVALS_PREFIX}: a "
                "request is opened once the batch is complete and every blocking check passed; see "
                "`backfills batches --batch ID` for its state"
            )
        return requests[-1]

    def update(
        self, batch_id: str, request_id: str, change: Callable[[ApprovalRequest], ApprovalRequest]
    ) -> ApprovalRequest:
        """Apply `change` with compare-and-swap (it may run more than once, on fresh reads)."""
        return update_object(
            self.store,
            self._key(batch_id, request_id),
            ApprovalRequest,
            change,
            create=None,
            missing=lambda: ApprovalNotFoundError(self._missing(batch_id, request_id)),
            what=f"approval request {request_id}",
        )

    def claim_notice(self, batch_id: str, kind: str) -> bool:
        """Claim the one notice of this kind for the batch (blocked, incomplete): False if already claimed."""
        try:
            self.store.put_if_absent(f"{NOTICES_PREFIX}/{batch_id}/{kind}.json", b"{}")
        except ObjectExistsError:
            return False
        return True

    def release_notice(self, batch_id: str, kind: str) -> None:
        """Give a claim back when its notice could not be sent, so a later attempt sends it."""
        self.store.delete(f"{NOTICES_PREFIX}/{batch_id}/{kind}.json")

    def _missing(self, batch_id: str, request_id: str) -> str:
        return (
            f"approval request {request_id} of batch {batch_id} does not exist under "
            f"{self.store.root}/{APPROVALS_PREFIX}"
        )
