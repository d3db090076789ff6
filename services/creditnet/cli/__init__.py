"""The `creditnet` command line: one tool for operators, banks and enterprises."""
