"""What crosses a party line, and how: the exchange record, message types, payload batches, SuperLink bundles, Flower's transport knobs.

Both sides import this package; it imports neither :mod:`fedrisk.federation` nor :mod:`fedrisk.parties`.
"""
