"""The one error type meant for users: bad input, named plainly; the command line exits 2."""


class EdvaeError(Exception):
    """A problem with what the user gave (file, key, shape, value), not a bug in edvae."""


class Diverged(EdvaeError):
    """Training reached a loss that is not finite; a result of its settings (e.g. the paper's clamp
    25 and 30, Table E.5), recorded in the run folder (engine/loop.py) so that a study reports it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step
