"""Named errors of the package: each message says what went wrong and what to do next."""

from __future__ import annotations


class BackfillsError(Exception):
    """Base of every error this package raises on purpose; the CLI prints these as one line."""


class ConfigurationError(BackfillsError):
    """A setting (environment variable or resource config) is missing or malformed."""


class ObjectNotFoundError(BackfillsError):
    """A catalog object (manifest, release, pointer) does not exist in the store."""


class ObjectExistsError(BackfillsError):
    """A create-only write found the object already there."""


class PreconditionFailedError(BackfillsError):
    """A conditional write lost: the object changed since it was read."""


class BatchNotFoundError(BackfillsError):
    """No manifest exists for the batch ID."""


class BatchSealedError(BackfillsError):
    """A write targeted a batch that no longer accepts partitions."""


class IllegalTransitionError(BatchSealedError):
    """A batch was asked to change state where its life cycle (resources/lifecycle.py) does not lead."""


class ReleaseNotFoundError(BackfillsError):
    """No release exists for the release ID."""


class CurrentChangedError(BackfillsError):
    """Compare-and-swap of CURRENT lost a race: another promotion or rollback moved it first."""


class MissingUpstreamPartitionError(BackfillsError):
    """A feature partition needs upstream partitions that are neither in its batch nor in production."""


class InvalidInputError(BackfillsError):
    """Raw or upstream data does not have the shape a feature needs."""


class UnknownTableError(BackfillsError):
    """A table name that is not in the feature registry."""


class InvalidRequestError(BackfillsError, ValueError):
    """Arguments that cannot be carried out as given (an empty reason, an unknown table, a bad ID)."""


class ContractViolationError(InvalidInputError):
    """Data breaks its table's contract; `report` (JSON) holds each broken rule, its count and sample rows."""

    def __init__(self, message: str, *, report: dict[str, object] | None = None) -> None:
        super().__init__(message)
        # Optional so the error survives pickling (which passes only the message) between processes.
        self.report = report or {}


class SchemaDriftError(InvalidInputError):
    """A landing file's Parquet schema lacks a raw column or has another type for it."""


class BlockedUpstreamError(BackfillsError):
    """Upstream partitions of the same batch failed blocking checks, so downstream is not computed."""


class EmptyInputError(InvalidInputError):
    """An input day that must have rows has none."""


class SparkConnectServerError(BackfillsError):
    """The local Spark Connect server could not be started, reached or stopped."""


class SlackUnavailableError(BackfillsError):
    """Slack could not be reached, or kept failing (rate limits, 5xx, timeouts) after the retries allowed."""


class SlackConfigurationError(ConfigurationError):
    """Slack refused a call because of the setup (token, scope, channel, user group); an operator fixes it."""


class ApprovalNotFoundError(BackfillsError):
    """No approval request exists for the batch (or for that request ID)."""


class BatchNotApprovedError(BackfillsError):
    """Promotion refused: the batch has no valid approval for its exact content (I6)."""


class StagedContentChangedError(BackfillsError):
    """Promotion refused: staged files no longer match the content hashes recorded (and approved)."""


class CodeVersionChangedError(BackfillsError):
    """Promotion refused: a table's deployed code is not the code that staged (and was approved for) it."""


class RestoredContentChangedError(BackfillsError):
    """Rollback refused: files of the partitions it would restore no longer match what their batches recorded
    at staging (changed, missing, or recorded with another content hash)."""


class StaleBatchError(BackfillsError):
    """Promotion refused: production already serves newer batches for some of the batch's partitions."""


class StaleDownstreamError(BackfillsError):
    """Promotion refused: the batch changes upstream days that production's downstream partitions were
    computed from, without recomputing them, so production would serve them stale."""


class RunFailedError(BackfillsError):
    """A Dagster run the CLI launched (promotion, rollback) failed; the message gives its root cause."""


class NotificationFailedError(BackfillsError):
    """The work is done (a batch staged and checked), but the approvals channel could not be told; the
    approval sensor tells it on a later tick. The CLI exits with its own code for it."""


class OnlineStoreError(BackfillsError):
    """The online store refused a read or a write (a table never synced, an unknown column, a row it cannot
    keep, a version not completely written) or could not be reached; the message names the store and what
    to do."""


class OnlineVersionChangedError(OnlineStoreError):
    """Compare-and-swap of an online table's current version lost: another sync or rollback moved it first."""


class OnlineParityError(OnlineStoreError):
    """Rows read back from a freshly written online version differ from the offline rows: it was not switched
    to, so readers stay on the version they had."""


class OnlineSyncFailedError(OnlineStoreError):
    """Production changed (a promotion, rollback or canary step went through), but the online store could not
    be brought in step after it; the message says what production serves and how to retry the sync."""


class DrillFailedError(BackfillsError):
    """A rollback drill found partitions a rollback could not restore (missing or modified files)."""


class CanaryConflictError(BackfillsError):
    """A canary is open, so production cannot change another way (and no second canary opens) until it is
    completed or rolled back; or the canary open is not the one asked about."""


class CanaryNotOpenError(BackfillsError):
    """No canary is open (for that batch): there is nothing to widen, complete or roll back."""


class CanaryUnhealthyError(BackfillsError):
    """The canary slice breached its health thresholds against the control slice: it was rolled back."""
