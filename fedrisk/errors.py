"""Exception hierarchy.

Every error a user can cause carries a one-line message that names the
problem (file, row, column, key, party...) so that the CLI can print it as-is.
"""

from __future__ import annotations


class FedriskError(Exception):
    """Base class of every error fedrisk raises on purpose."""


class DataValidationError(FedriskError):
    """A party's table does not match its declared schema."""


class ConfigError(FedriskError):
    """A federation, scenario or policy file is invalid."""


class CryptoError(FedriskError):
    """A key, context, ciphertext or signature is missing, wrong or tampered."""


class ContextMismatchError(CryptoError):
    """A ciphertext was made under a different CKKS context than the one given."""


class ProtocolError(FedriskError):
    """A protocol message is malformed, unexpected, or a party broke the protocol."""


class PartyUnavailableError(ProtocolError):
    """A party did not answer within its deadline or left the federation."""


class LedgerError(FedriskError):
    """The audit ledger refused a write or failed verification."""
