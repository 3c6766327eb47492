"""The two kinds of failure: the user's input is wrong, or we have a bug; and the system stopping us."""


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""


class InternalError(RuntimeError):
    """A bug in mq-deploy (an invariant that should always hold did not)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `docker stop`, a batch system): raised like Ctrl-C's KeyboardInterrupt, so that the same
    clean-up runs (temporary OUTDIRs removed, compare's rows kept); the CLI exits 143."""
