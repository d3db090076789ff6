"""Benchmarks (`make bench`): every figure is a ratio against a baseline
measured in the same run on the same machine, because these machines are
shared and absolute numbers drift."""

__all__: list[str] = []
