"""fedrisk.parties."""
