"""creditnet: the Yangtze River Delta cross-city enterprise credit-information sharing network."""

__version__ = "0.1.0"
