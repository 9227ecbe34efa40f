"""Errors the package raises for bad input, so scripts can print them without a traceback."""


class MtlError(ValueError):
    """Base class: a problem with the user's input (data, config, arguments)."""


class DataError(MtlError):
    """The data on disk is missing, malformed or inconsistent."""


class ConfigError(MtlError):
    """A configuration key or value is unknown or invalid."""


class WriteError(MtlError):
    """A file or folder cannot be written (no space left, read-only file system, no permission)."""
