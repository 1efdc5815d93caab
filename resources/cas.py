"""Read-modify-write of one JSON catalog object with compare-and-swap, retried when another writer wins."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from backfills.errors import ObjectExistsError, ObjectNotFoundError, PreconditionFailedError
from backfills.resources.storage import ObjectStore

CAS_MAX_ATTEMPTS = 50
_BACKOFF_BASE_SECONDS = 0.005
_BACKOFF_CAP_SECONDS = 0.25

Model = TypeVar("Model", bound=BaseModel)


def dump(model: BaseModel) -> bytes:
    return model.model_dump_json(indent=2).encode("utf-8")


def backoff(attempt: int) -> None:
    # Full jitter: writers that collided once spread out instead of colliding again in lockstep.
    time.sleep(random.uniform(0, min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2**attempt)))


def update_object(
    store: ObjectStore,
    key: str,
    model: type[Model],
    change: Callable[[Model], Model],
    *,
    create: Callable[[], Model] | None,
    missing: Callable[[], Exception],
    what: str,
    max_attempts: int = CAS_MAX_ATTEMPTS,
) -> Model:
    """Apply `change` to the object at `key` (creating it with `create` if absent) and write it back only
    if nobody wrote it in between; otherwise read again and retry.

    `change` may run several times, each on a fresh read, so it must have no side effects beyond the object
    it returns; an exception it raises aborts the update with nothing written. Without `create`, a missing
    object raises `missing()`.
    """
    for attempt in range(max_attempts):
        try:
            body, version = store.get_versioned(key)
        except ObjectNotFoundError:
            if create is None:
                raise missing() from None
            created = change(create())
            try:
                store.put_if_absent(key, dump(created))
            except ObjectExistsError:
                # Another writer created it first: update theirs on the next pass.
                continue
            return created
        updated = change(model.model_validate_json(body))
        try:
            store.put_if_match(key, dump(updated), version)
        except PreconditionFailedError:
            backoff(attempt)
            continue
        return updated
    raise PreconditionFailedError(
        f"{what}: {store.root}/{key} changed under each of {max_attempts} attempts to update it, so another "
        "writer keeps winning; nothing was changed by this update; retry when the other writers have finished"
    )
