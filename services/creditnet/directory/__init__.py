"""The signed network directory (protocol v2): who is in the network, signed by k of n governance keys.

- `model`: the directory as typed values; parsing exact bytes and the content rules.
- `sign`: building envelopes and adding governance signatures; envelope files.
- `verify`: verification against a trusted directory or a pinned anchor, and
  `DirectoryHolder`, which keeps the last good directory on disk.

docs/directory.md specifies the rules for implementers in other languages.
"""

from creditnet.directory.errors import RULES, refuse
from creditnet.directory.model import Directory
from creditnet.directory.sign import DIRECTORY_TYPE, add_signature, sign
from creditnet.directory.verify import DirectoryHolder, VerifiedDirectory, verify

__all__ = [
    "DIRECTORY_TYPE",
    "RULES",
    "Directory",
    "DirectoryHolder",
    "VerifiedDirectory",
    "add_signature",
    "refuse",
    "sign",
    "verify",
]
