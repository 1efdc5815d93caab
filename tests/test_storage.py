"""Object storage: conditional writes and listings behave the same on a local folder and on the S3 API."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from backfills.errors import (
    ConfigurationError,
    ObjectExistsError,
    ObjectNotFoundError,
    PreconditionFailedError,
)
from backfills.resources.storage import LocalObjectStore, ObjectStore, S3ObjectStore, open_store


def test_reading_what_was_written_returns_the_same_bytes(store: ObjectStore) -> None:
    store.put("catalog/batches/b1.json", b'{"batch_id": "b1"}')

    assert store.get("catalog/batches/b1.json") == b'{"batch_id": "b1"}'
    body, version = store.get_versioned("catalog/batches/b1.json")
    assert body == b'{"batch_id": "b1"}'
    assert version


def test_reading_a_missing_object_names_it_and_the_root(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"catalog/CURRENT does not exist under .*") as error:
        store.get("catalog/CURRENT")
    assert store.root in str(error.value)
    with pytest.raises(ObjectNotFoundError):
        store.get_versioned("catalog/CURRENT")


def test_create_only_write_succeeds_once_then_refuses_and_keeps_the_first(store: ObjectStore) -> None:
    store.put_if_absent("catalog/releases/r1.json", b"first")

    with pytest.raises(ObjectExistsError, match="catalog/releases/r1.json already exists"):
        store.put_if_absent("catalog/releases/r1.json", b"second")
    assert store.get("catalog/releases/r1.json") == b"first"


def test_conditional_replace_with_a_stale_version_fails_and_changes_nothing(store: ObjectStore) -> None:
    store.put("catalog/CURRENT", b"r1")
    _, stale = store.get_versioned("catalog/CURRENT")
    store.put("catalog/CURRENT", b"r2")

    with pytest.raises(PreconditionFailedError, match="catalog/CURRENT changed"):
        store.put_if_match("catalog/CURRENT", b"r3", stale)
    assert store.get("catalog/CURRENT") == b"r2"

    _, fresh = store.get_versioned("catalog/CURRENT")
    store.put_if_match("catalog/CURRENT", b"r3", fresh)
    assert store.get("catalog/CURRENT") == b"r3"
    _, newest = store.get_versioned("catalog/CURRENT")
    assert newest != fresh


def test_conditional_replace_of_a_deleted_object_fails(store: ObjectStore) -> None:
    store.put("catalog/CURRENT", b"r1")
    _, version = store.get_versioned("catalog/CURRENT")
    store.delete("catalog/CURRENT")

    with pytest.raises(PreconditionFailedError, match="no longer exists"):
        store.put_if_match("catalog/CURRENT", b"r2", version)
    assert not store.exists("catalog/CURRENT")


def test_listing_a_prefix_returns_only_the_keys_under_that_folder_sorted(store: ObjectStore) -> None:
    for key in [
        "catalog/batches/b2.json",
        "catalog/batches/b1.json",
        "catalog/batches-old/b0.json",
        "catalog/CURRENT",
        "staging/t/b1/feature_date=2025-01-01/part-0.parquet",
    ]:
        store.put(key, b"x")
    store.put_if_absent("catalog/batches/b3.json", b"x")

    assert store.list("catalog/batches") == [
        "catalog/batches/b1.json",
        "catalog/batches/b2.json",
        "catalog/batches/b3.json",
    ]
    assert store.list("catalog/batches/") == store.list("catalog/batches")
    assert store.list("staging") == ["staging/t/b1/feature_date=2025-01-01/part-0.parquet"]
    assert store.list("nothing/here") == []
    assert len(store.list("")) == 6


def test_exists_and_delete(store: ObjectStore) -> None:
    store.put("staging/t/b1/part-0.parquet", b"x")
    assert store.exists("staging/t/b1/part-0.parquet")
    assert not store.exists("staging/t/b1/part-1.parquet")

    store.delete("staging/t/b1/part-0.parquet")
    store.delete("staging/t/b1/part-0.parquet")

    assert not store.exists("staging/t/b1/part-0.parquet")
    assert store.list("staging") == []


def test_keys_cannot_escape_the_storage_root(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="without '..'"):
        store.put("../outside.json", b"x")
    with pytest.raises(ValueError, match="without '..'"):
        store.list("catalog/../../outside")


def test_spark_gets_a_uri_for_each_key(store: ObjectStore) -> None:
    uri = store.data_uri("staging/t/b1/feature_date=2025-01-01")

    if isinstance(store, S3ObjectStore):
        assert uri == f"s3a://{store.bucket}/backfills-test/staging/t/b1/feature_date=2025-01-01"
    else:
        assert uri == f"{store.root}/staging/t/b1/feature_date=2025-01-01"


def test_storage_root_picks_the_backend(tmp_path: Path) -> None:
    local = open_store(str(tmp_path / "root"))
    assert isinstance(local, LocalObjectStore)
    assert local.root == str(tmp_path / "root")

    with pytest.raises(ConfigurationError, match="names no bucket"):
        open_store("s3:///prefix")
    with pytest.raises(ConfigurationError, match="unsupported scheme"):
        open_store("gs://bucket/prefix")


def test_racing_conditional_writers_on_a_local_folder_have_exactly_one_winner(tmp_path: Path) -> None:
    # Real threads only on the local store: moto checks If-Match and then writes without a lock, so under
    # concurrent requests it can let two writers win, which S3 itself does not.
    store = LocalObjectStore(tmp_path)
    store.put("catalog/CURRENT", b"r0")
    _, version = store.get_versioned("catalog/CURRENT")
    writers = 8
    barrier = threading.Barrier(writers)
    winners: list[int] = []
    losers: list[int] = []

    def write(index: int) -> None:
        barrier.wait()
        try:
            store.put_if_match("catalog/CURRENT", f"r{index + 1}".encode(), version)
            winners.append(index)
        except PreconditionFailedError:
            losers.append(index)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(winners) == 1
    assert len(losers) == writers - 1
    assert store.get("catalog/CURRENT") == f"r{winners[0] + 1}".encode()
