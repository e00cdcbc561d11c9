"""The one exception a user can fix: its message is the whole error report."""


class ConfigError(ValueError):
    """Bad input; the message says what is wrong and what would be right, in one line."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message: enough to say what went wrong, in one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Stopped(BaseException):
    """A stop signal arrived (filterviz/stops.py). A BaseException, like KeyboardInterrupt, so
    that `except Exception` lets it pass on to the code that ends the run."""

    def __init__(self, signum: int):
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.finished = None  # the JobResult of a run the stop reached as it ended, complete (job.run)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
