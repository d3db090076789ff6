"""The national aggregator: federates signed queries to the city nodes."""

__all__: list[str] = []
