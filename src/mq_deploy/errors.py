"""The two kinds of failure: the user's input is wrong, or we have a bug."""


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""


class InternalError(RuntimeError):
    """A bug in mq-deploy (an invariant that should always hold did not)."""
