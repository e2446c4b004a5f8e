"""Model bundles: safetensors weights plus JSON metadata, Ed25519-signed.

A bundle is a folder written atomically by :func:`fedrisk.crypto.signing.write_signed_bundle`
and verified before anything in it is parsed.  Nothing is ever pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from fedrisk.crypto.signing import verify_bundle, write_signed_bundle

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def write_model_bundle(folder: Path, arrays: dict[str, np.ndarray], meta: dict, identity) -> Path:
    """Write and sign a bundle; returns its folder."""
    files = {
        WEIGHTS_FILE: save_safetensors({k: np.ascontiguousarray(v) for k, v in arrays.items()}),
        META_FILE: json.dumps(meta, indent=2, sort_keys=True).encode(),
    }
    return write_signed_bundle(Path(folder), files, identity, meta={"kind": meta.get("kind", "model")})


def load_model_bundle(folder: Path, trusted_public_keys: Iterable[bytes] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Verify a bundle's signature and hashes, then return its arrays and metadata."""
    files = verify_bundle(Path(folder), trusted_public_keys)
    return load_safetensors(files[WEIGHTS_FILE]), json.loads(files[META_FILE])
