"""creditnet: the Yangtze River Delta cross-city enterprise credit-information sharing network."""

__all__: list[str] = []

__version__ = "0.1.0"
