"""The one error type of the dev cluster: its message says what the user should do."""


class DevClusterError(Exception):
    """A dev cluster could not be started, found or stopped; the message says what to do."""
