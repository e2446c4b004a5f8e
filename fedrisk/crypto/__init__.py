"""fedrisk.crypto."""
