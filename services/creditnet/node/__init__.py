"""A city node: holds its city's credit records and answers signed queries."""

__all__: list[str] = []
