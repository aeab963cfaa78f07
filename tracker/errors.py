"""The one exception type for problems a user can cause and fix."""


class TrackerError(RuntimeError):
    """A user-fixable problem (missing or malformed file, bad setting, unreadable input).

    The message always says what is wrong and how to fix it.
    """
