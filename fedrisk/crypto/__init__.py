"""fedrisk.crypto.

Homomorphic encryption comes in two layers, as pyca/cryptography separates its
recipes from ``hazmat``: :mod:`fedrisk.crypto.ckks` is the recipes layer (the
one CKKS context type, checked loading, public copies, FedAvg's encrypted
vectors); :mod:`fedrisk.crypto.encrypted_matvec`,
:mod:`fedrisk.crypto.encrypted_histogram`, :mod:`fedrisk.crypto.bfv`,
:mod:`fedrisk.crypto.seal_runtime` (the one context fingerprint),
:mod:`fedrisk.crypto.frames` (and the list of binary magics) and
:mod:`fedrisk.crypto.worker_pool` are the hazmat layer beneath it.
"""
