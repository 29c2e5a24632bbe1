"""Exceptions that separate data problems from bugs.

A :class:`DataError` means *this data unit* cannot be processed (a truncated
FITS, no WCS, too few reference stars...). Adapters catch it, record the unit
as failed with ``str(err)`` as the reason, and let the run go on. Any other
exception is a bug or an environment problem and fails the job loudly.
"""


class DataError(Exception):
    """The input data of one unit (a CCD, a patch) cannot be processed.

    The message names the file and the problem and, where possible, what the
    user can do about it. ``code`` is a short machine-readable reason used in the
    registry (e.g. ``"no_wcs"``, ``"few_refstars"``).
    """

    def __init__(self, message, *, code="data_error"):
        super().__init__(message)
        self.code = code


class ConfigError(Exception):
    """The configuration is inconsistent in a way the JSON schema cannot express."""
