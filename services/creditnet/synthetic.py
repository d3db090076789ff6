"""Transitional: the synthetic data generator is `creditnet_devkit.synthetic`.

Only `creditnet.bench` still imports it from here; this alias goes when
bench/ moves into creditnet_devkit (issue 11). Nothing else may use it: the
runtime package does not load the devkit when imported
(tests/unit/test_devkit_boundary.py, which skips this module with bench/).
"""

from creditnet_devkit.synthetic import *  # noqa: F403
from creditnet_devkit.synthetic import __all__ as __all__
