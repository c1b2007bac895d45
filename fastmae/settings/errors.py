"""Typed errors. Anything a user can cause (bad flags, files, checkpoints) raises a
subclass of FastMAEError; the CLI turns it into one line on stderr and exit code 2."""


class FastMAEError(Exception):
    """Base class of every error a user can cause."""


class ConfigError(FastMAEError, ValueError):
    """A bad argument, flag or configuration value."""


class CheckpointError(FastMAEError, ValueError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit the model."""


class DataError(FastMAEError, ValueError):
    """A data source that cannot be used (missing, empty, unreadable)."""


class BackendUnavailable(FastMAEError, RuntimeError):
    """A backend asked for by name (flash-attn, DALI, Triton) cannot run here."""


class TrainingError(FastMAEError, RuntimeError):
    """A run that cannot go on (e.g. the loss stayed non-finite); its last good state is saved."""
