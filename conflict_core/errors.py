"""The project's exception hierarchy.

Every error the product raises on purpose derives from :class:`ConflictPredictorError`.
Messages say what was expected and what was found, so that a caller (or an HTTP client,
through the serving layer) can act on them without reading the source.
"""

from __future__ import annotations


class ConflictPredictorError(Exception):
    """Base class of every error raised on purpose by Conflict Predictor."""


class ConfigurationError(ConflictPredictorError):
    """A setting or a configuration file has a value the product cannot use."""


class StoreError(ConflictPredictorError):
    """The sync event store is unreachable or refused an operation."""


class ImportFormatError(ConflictPredictorError):
    """An import file does not follow the sync event import format.

    Carries the file, the 1-based data row (``None`` for file-level problems such as a
    missing column) and the column, so that the message points at the exact cell.
    """

    def __init__(self, path: str, problem: str, *, row: int | None = None, column: str | None = None):
        self.path = path
        self.row = row
        self.column = column
        self.problem = problem
        where = [f"file {path}"]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}")


class ValidationError(ConflictPredictorError):
    """A request or an input value is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class TrainingDataError(ConflictPredictorError):
    """The training set is too small or too one-sided to train a trustworthy model."""


class RegistryError(ConflictPredictorError):
    """A model registry operation cannot be carried out (unknown version, bad state)."""


class ArtifactIntegrityError(RegistryError):
    """A model artifact is missing or its sha256 does not match the registry row."""


class ArtifactFormatError(RegistryError):
    """An artifact whose checksum matched holds something other than a Conflict Predictor model."""


class RolloutError(RegistryError):
    """A rollout step is not allowed from the version's current stage (or another challenger runs)."""


class JobLockedError(ConflictPredictorError):
    """Another run of the same job holds the lock."""
