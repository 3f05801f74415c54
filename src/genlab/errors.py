"""One exception type for every problem a user can cause; the CLI prints it as one line."""


class GenlabError(Exception):
    """Bad input (file, config, argument, run dir). Message: what is wrong and what is allowed."""
