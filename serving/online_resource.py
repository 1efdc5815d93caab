"""Dagster resource that opens the online store named by BACKFILLS_ONLINE_STORE (or the embedded default)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource
from pydantic import Field

from backfills.serving.online_store import OnlineStore, open_online_store


class OnlineStoreResource(ConfigurableResource):
    """The online store the promotion and rollback jobs keep in step with production (no URL: none)."""

    url: str | None = Field(
        default=None,
        description="sqlite:///absolute/path.db or redis://host:port/db (BACKFILLS_ONLINE_STORE); unset: off",
    )

    def open(self) -> OnlineStore | None:
        return open_online_store(self.url) if self.url else None

    @contextmanager
    def opened(self) -> Iterator[OnlineStore | None]:
        """The store for a block, closed after it; None when there is no online store."""
        store = self.open()
        try:
            yield store
        finally:
            if store is not None:
                store.close()
