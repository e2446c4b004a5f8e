"""fedrisk: privacy-preserving federated credit-risk modelling for SME lending."""

__version__ = "0.1.0"
