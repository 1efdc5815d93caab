"""The code location: every asset, job and resource, built from the settings in one place."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from backfills.assets.factory import build_feature_assets, daily_partitions, raw_transactions_spec
from backfills.assets.registry import FEATURES
from backfills.resources.catalog_resource import CatalogResource
from backfills.resources.settings import Settings, load_settings
from backfills.resources.spark import SparkResource

STAGE_FEATURES_JOB = "stage_features"


def build_definitions(settings: Settings) -> Definitions:
    partitions = daily_partitions(settings.partitions_start)
    feature_assets = build_feature_assets(FEATURES, partitions, settings.max_partitions_per_run)
    stage_features = define_asset_job(
        STAGE_FEATURES_JOB,
        selection=AssetSelection.assets(*feature_assets),
        description="Stage feature partitions into a batch (launch a backfill of it to recompute history).",
    )
    return Definitions(
        assets=[raw_transactions_spec(partitions), *feature_assets],
        jobs=[stage_features],
        # Feature steps share the run's process and its Spark session instead of one JVM per step.
        executor=in_process_executor,
        resources={
            "spark": SparkResource.from_settings(settings),
            "catalog": CatalogResource(storage_root=settings.storage_root),
        },
    )


defs = build_definitions(load_settings())
