"""The launcher's user-fixable error."""


class PipelineError(RuntimeError):
    """A user-fixable problem (missing inputs, an inconsistent workdir); the message says what to do."""
