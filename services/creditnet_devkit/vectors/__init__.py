"""The published test vectors of docs/test-vectors/v2, generated deterministically.

`core` holds the fixed cast (keys, certificates, participants) and the
envelope vectors; `chain`, `directory`, `provenance`, `routing` and `sealed`
the vectors of their part of the protocol. ``python -m creditnet_devkit.vectors``
writes (or, with ``--check``, compares) every file at once (`cli`).
"""

__all__: list[str] = []
