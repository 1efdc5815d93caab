"""Dagster resource that opens the object store and the release catalog under the storage root."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.storage import ObjectStore, open_store


class CatalogResource(ConfigurableResource):
    """Feature data and the release catalog under one storage root (local folder or s3://bucket/prefix)."""

    storage_root: str = Field(
        description="Local folder or s3://bucket/prefix holding staging, releases, catalog."
    )

    def store(self) -> ObjectStore:
        return open_store(self.storage_root)

    def catalog(self) -> ReleaseCatalog:
        return ReleaseCatalog(self.store())
