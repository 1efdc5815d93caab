"""Object storage under the storage root: a small protocol with a local-folder and an S3 implementation.

The catalog keeps its JSON objects here; Spark reads and writes Parquet under `data_uri(key)`.
Keys are '/'-separated paths relative to the root. Conditional writes give the catalog its
compare-and-swap: on S3 a conditional PUT, locally a lock file plus an atomic rename.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from backfills.errors import (
    ConfigurationError,
    InvalidRequestError,
    ObjectExistsError,
    ObjectNotFoundError,
    PreconditionFailedError,
)


@dataclass(frozen=True)
class StoredObject:
    """One stored object as a listing describes it: key, size in bytes and when it was last written."""

    key: str
    size: int
    modified: datetime


@runtime_checkable
class ObjectStore(Protocol):
    """What the catalog and the generator need from storage."""

    root: str

    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise ObjectNotFoundError if absent."""

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """Return the object's bytes and an opaque version token for `put_if_match`."""

    def put(self, key: str, body: bytes) -> None:
        """Write the object whole (readers see the old or the new bytes, never a part)."""

    def put_if_absent(self, key: str, body: bytes) -> None:
        """Create the object; raise ObjectExistsError if it already exists."""

    def put_if_match(self, key: str, body: bytes, version: str) -> None:
        """Replace the object only if it still has `version`; raise PreconditionFailedError otherwise."""

    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    def list(self, prefix: str) -> list[str]:
        """Keys of all objects under `prefix`, sorted."""

    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    def describe(self, prefix: str) -> list[StoredObject]:
        """Every object under `prefix` with its size and time, sorted by key (hidden files included: a
        listing for cleanup must see all of a folder's bytes)."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix` (and, locally, the folders)."""

    def checksum(self, key: str) -> str:
        """A checksum of the object's bytes that changes when they do (ObjectNotFoundError if absent)."""

    def data_uri(self, key: str) -> str:
        """The URI Spark uses for `key` (a local path or `s3a://…`)."""


def _clean_key(key: str) -> str:
    key = key.strip("/")
    if not key or ".." in key.split("/"):
        raise InvalidRequestError(f"invalid storage key {key!r}: use a relative path without '..'")
    return key


class LocalObjectStore:
    """Objects as files under a local folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(root).expanduser().resolve()
        self.root = str(self.path)

    def _file(self, key: str) -> Path:
        return self.path / _clean_key(key)

    def get(self, key: str) -> bytes:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{key} does not exist under {self.root}") from None

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        body = self.get(key)
        return body, hashlib.sha256(body).hexdigest()

    def _write_temp(self, target: Path, body: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        with open(temp, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        return temp

    def put(self, key: str, body: bytes) -> None:
        target = self._file(key)
        os.replace(self._write_temp(target, body), target)

    def put_if_absent(self, key: str, body: bytes) -> None:
        target = self._file(key)
        temp = self._write_temp(target, body)
        try:
            # link() fails if the target exists, so creation is atomic and whole.
            os.link(temp, target)
        except FileExistsError:
            raise ObjectExistsError(f"{key} already exists under {self.root}") from None
        finally:
            temp.unlink(missing_ok=True)

    @contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{target.name}.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def put_if_match(self, key: str, body: bytes, version: str) -> None:
        target = self._file(key)
        with self._locked(target):
            try:
                _, current = self.get_versioned(key)
            except ObjectNotFoundError:
                raise PreconditionFailedError(f"{key} no longer exists under {self.root}") from None
            if current != version:
                raise PreconditionFailedError(f"{key} changed under {self.root} since it was read")
            os.replace(self._write_temp(target, body), target)

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._file(prefix) if prefix.strip("/") else self.path
        if not base.exists():
            return []
        keys = [
            str(path.relative_to(self.path))
            for path in base.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        ]
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._file(key).unlink(missing_ok=True)

    def describe(self, prefix: str) -> list[StoredObject]:
        base = self._file(prefix) if prefix.strip("/") else self.path
        if not base.exists():
            return []
        found = []
        for path in base.rglob("*"):
            if path.is_file():
                stat = path.stat()
                modified = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
                found.append(StoredObject(str(path.relative_to(self.path)), stat.st_size, modified))
        return sorted(found, key=lambda item: item.key)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._file(prefix), ignore_errors=True)

    def checksum(self, key: str) -> str:
        digest = hashlib.sha256()
        try:
            with open(self._file(key), "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{key} does not exist under {self.root}") from None
        return f"sha256:{digest.hexdigest()}"

    def data_uri(self, key: str) -> str:
        return str(self.path / key.strip("/"))


class S3ObjectStore:
    """Objects under `s3://bucket/prefix`, through a boto3 S3 client (dagster-aws `S3Resource`)."""

    def __init__(self, bucket: str, prefix: str = "", client: object | None = None) -> None:
        if client is None:
            from dagster_aws.s3 import S3Resource

            client = S3Resource(endpoint_url=os.environ.get("AWS_ENDPOINT_URL")).get_client()
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _code(error: Exception) -> str:
        response = getattr(error, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def get(self, key: str) -> bytes:
        return self.get_versioned(key)[0]

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as error:
            if self._code(error) in {"NoSuchKey", "404"}:
                raise ObjectNotFoundError(f"{key} does not exist under {self.root}") from None
            raise
        return response["Body"].read(), response["ETag"]

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body)

    def put_if_absent(self, key: str, body: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, IfNoneMatch="*")
        except Exception as error:
            if self._code(error) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                raise ObjectExistsError(f"{key} already exists under {self.root}") from None
            raise

    def put_if_match(self, key: str, body: bytes, version: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, IfMatch=version)
        except Exception as error:
            if self._code(error) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                raise PreconditionFailedError(f"{key} changed under {self.root} since it was read") from None
            if self._code(error) in {"NoSuchKey", "404"}:
                raise PreconditionFailedError(f"{key} no longer exists under {self.root}") from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as error:
            if self._code(error) in {"NoSuchKey", "404", "NotFound"}:
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        return [item.key for item in self.describe(prefix)]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def describe(self, prefix: str) -> list[StoredObject]:
        full = self._key(prefix) + "/" if prefix.strip("/") else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                found.append(StoredObject(item["Key"][strip:], int(item["Size"]), item["LastModified"]))
        return sorted(found, key=lambda item: item.key)

    def delete_prefix(self, prefix: str) -> None:
        for item in self.describe(prefix):
            self.delete(item.key)

    def checksum(self, key: str) -> str:
        # The ETag changes with the bytes (an MD5 for single-part uploads, a digest of the parts' MD5s else).
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as error:
            if self._code(error) in {"NoSuchKey", "404", "NotFound"}:
                raise ObjectNotFoundError(f"{key} does not exist under {self.root}") from None
            raise
        return f"etag:{response['ETag'].strip(chr(34))}"

    def data_uri(self, key: str) -> str:
        # Spark on clusters with hadoop-aws reads S3 through the s3a connector.
        return f"s3a://{self.bucket}/{self._key(key)}"


def open_store(root: str) -> ObjectStore:
    """The store for a storage root: `s3://bucket/prefix` or a local folder."""
    if root.startswith("s3a://") or root.startswith("s3://"):
        rest = root.split("://", 1)[1]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigurationError(f"storage root {root!r} names no bucket: use s3://bucket/prefix")
        return S3ObjectStore(bucket, prefix)
    if "://" in root:
        raise ConfigurationError(
            f"storage root {root!r} has an unsupported scheme: use a local folder or s3://bucket/prefix"
        )
    return LocalObjectStore(root)
