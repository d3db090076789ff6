"""The `creditnet` command line: one tool for operators, banks and enterprises."""

__all__: list[str] = []
