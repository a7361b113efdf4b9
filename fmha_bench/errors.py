"""User errors: one clear line naming what to fix, exit code 2. Bugs keep their traceback."""
from __future__ import annotations

EXIT_OK, EXIT_POINT_FAILED, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """Bad input from the user (a sweep file, a flag, a missing binary). The message is the
    whole story: it names the file:line, flag or field to change."""

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        text = f"{where}: {message}" if where else message
        super().__init__(text.replace("\r", "\\r").replace("\n", "\\n"))  # one line, whatever the input held
