"""Developer tooling for creditnet: test data and test-vector generators.

Kept out of the runtime package `creditnet`, which never imports it at module
import time (tests/unit/test_devkit_boundary.py): servers and the bank SDK
load none of it. The CLI commands that make demo data (`creditnet demo`,
`network up`, `data generate`, admitting a city) import it when they run.

- `synthetic`: deterministic, realistic synthetic enterprises and credit records.
- `vectors`: the published test vectors of docs/test-vectors/v2.
"""

__all__: list[str] = []
