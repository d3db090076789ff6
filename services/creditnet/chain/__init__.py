"""The credit chain's formats and proofs: a pure library, no I/O.

Each city node runs an append-only Merkle log in the style of Certificate
Transparency. This package holds what every party checks it with, and
nothing that stores, serves or fetches (that is :mod:`creditnet.ledger`,
:mod:`creditnet.witness` and :mod:`creditnet.auditor`):

* :mod:`.merkle` — RFC 9162 hashing, proof generation and proof verification;
* :mod:`.tree` — the append-only tree over a :class:`~.tree.HashStore` of
  perfect-subtree hashes (roots and proofs in O(log n) reads);
* :mod:`.note` — C2SP signed notes, Ed25519 and cosignature/v1 keys;
* :mod:`.checkpoint` — C2SP checkpoints, cosignatures and k-of-n verification;
* :mod:`.keys` — log and witness keys and their certificates from the network CA;
* :mod:`.receipts` — offline verification of a receipt (entry, inclusion proof,
  cosigned checkpoint) and the enterprise commitment;
* :mod:`.network` — the aggregator's network checkpoint and its verification.
"""

from creditnet.chain.checkpoint import (
    Checkpoint,
    CheckpointError,
    Cosignature,
    CosignedCheckpoint,
    QuorumError,
    SignedCheckpoint,
    cosign,
    open_checkpoint,
    verify_cosignature,
    verify_cosigned,
)
from creditnet.chain.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    ProofError,
    leaf_hash,
    node_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from creditnet.chain.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Note,
    NoteError,
    NoteSignature,
    NoteVerificationError,
    OpenedNote,
    Signer,
    VerifierKey,
    open_note,
    sign_note,
)
from creditnet.chain.tree import (
    HashStore,
    MemoryHashStore,
    MerkleTree,
    TreeConflictError,
    TreeError,
)

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Checkpoint",
    "CheckpointError",
    "Cosignature",
    "CosignedCheckpoint",
    "HashStore",
    "MemoryHashStore",
    "MerkleTree",
    "Note",
    "NoteError",
    "NoteSignature",
    "NoteVerificationError",
    "OpenedNote",
    "ProofError",
    "QuorumError",
    "SignedCheckpoint",
    "Signer",
    "TreeConflictError",
    "TreeError",
    "VerifierKey",
    "cosign",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "root_from_leaves",
    "sign_note",
    "verify_consistency",
    "verify_cosignature",
    "verify_cosigned",
    "verify_inclusion",
]
