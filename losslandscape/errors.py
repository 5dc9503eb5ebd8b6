"""The one exception type for bad input, in a leaf module every other module may import.

A user mistake (malformed grid, missing file, mismatched checkpoint, a loss function returning the
wrong thing ...) raises ``UsageError`` from wherever it is detected; cli.run_main turns it into one
line on stderr and exit status 2, and api.py lets it reach the Python caller as it is.
"""


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""
