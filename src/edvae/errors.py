"""The one error type meant for users: bad input, named plainly; the command line exits 2."""


class EdvaeError(Exception):
    """A problem with what the user gave (file, key, shape, value), not a bug in edvae."""
