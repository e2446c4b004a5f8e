"""Cut a pooled table's rows into banks' shares: IID, Dirichlet label skew, quantity skew.

Every function takes a ``numpy.random.Generator`` and returns one sorted
array of row indices per bank; the same generator state gives the same
partition.  Shares are disjoint and cover every row.

* :func:`iid_partition` — a random permutation cut into equal shares.
* :func:`dirichlet_label_partition` — label skew (Hsu, Qi & Brown 2019;
  NIID-Bench, Li et al. 2022): for each class, draw bank proportions
  ``p ~ Dir(alpha · 1)`` and split that class's rows accordingly.  Small
  ``alpha`` gives banks very different default rates; large ``alpha``
  approaches IID.
* :func:`quantity_skew_partition` — size skew: bank sizes are ``Dir(alpha)``
  shares of the rows, each share drawn IID.

Both skewed schemes redraw (up to 1,000 times) until every bank has at least
``min_rows`` rows, as NIID-Bench does; if that never happens the request is
impossible and a :class:`~fedrisk.errors.ConfigError` says so.
"""

from __future__ import annotations

import numpy as np

from fedrisk.errors import ConfigError

MAX_DRAWS = 1000


def _check(n_rows: int, n_banks: int, min_rows: int) -> None:
    if n_banks < 1:
        raise ConfigError(f"parties.count: need at least one bank, got {n_banks}")
    if n_rows < n_banks * min_rows:
        raise ConfigError(
            f"partitioning.min-rows: {n_banks} banks x {min_rows} rows needs {n_banks * min_rows} rows, "
            f"the pool has {n_rows} (raise data.rows or lower partitioning.min-rows)"
        )


def iid_partition(n_rows: int, n_banks: int, rng: np.random.Generator, *, min_rows: int = 1) -> list[np.ndarray]:
    """Equal random shares (sizes differ by at most one row).

    Parameters
    ----------
    n_rows : int
        Rows in the pool.
    n_banks : int
        Number of shares.
    rng : numpy.random.Generator
        Source of randomness.
    min_rows : int
        Fewest rows a share may have.

    Returns
    -------
    list of numpy.ndarray
        Sorted row indices per bank.
    """
    _check(n_rows, n_banks, min_rows)
    order = rng.permutation(n_rows)
    return [np.sort(part) for part in np.array_split(order, n_banks)]


def dirichlet_label_partition(labels: np.ndarray, n_banks: int, alpha: float, rng: np.random.Generator, *, min_rows: int = 1) -> list[np.ndarray]:
    """Label skew: each class's rows are split among banks in ``Dir(alpha)`` proportions.

    Parameters
    ----------
    labels : numpy.ndarray
        The pool's class labels (any hashable values; 0/1 for credit default).
    n_banks : int
        Number of shares.
    alpha : float
        Dirichlet concentration, > 0.
    rng : numpy.random.Generator
        Source of randomness.
    min_rows : int
        Fewest rows a share may have; partitions are redrawn until it holds.

    Returns
    -------
    list of numpy.ndarray
        Sorted row indices per bank.
    """
    if not alpha > 0:
        raise ConfigError(f"partitioning.alpha: must be > 0, got {alpha}")
    labels = np.asarray(labels)
    _check(labels.size, n_banks, min_rows)
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(MAX_DRAWS):
        shares: list[list[np.ndarray]] = [[] for _ in range(n_banks)]
        for rows in by_class:
            rows = rng.permutation(rows)
            proportions = rng.dirichlet(np.full(n_banks, alpha))
            cuts = (np.cumsum(proportions)[:-1] * rows.size).astype(int)
            for bank, part in enumerate(np.split(rows, cuts)):
                shares[bank].append(part)
        parts = [np.sort(np.concatenate(s)) for s in shares]
        if min(p.size for p in parts) >= min_rows:
            return parts
    raise ConfigError(
        f"partitioning.alpha: with alpha = {alpha} no draw in {MAX_DRAWS} gave every one of {n_banks} banks "
        f"{min_rows} rows (raise alpha or data.rows, or lower partitioning.min-rows)"
    )


def quantity_skew_partition(n_rows: int, n_banks: int, alpha: float, rng: np.random.Generator, *, min_rows: int = 1) -> list[np.ndarray]:
    """Size skew: bank sizes are ``Dir(alpha)`` shares of the pool, rows assigned at random.

    Parameters are those of :func:`dirichlet_label_partition`, with the pool's size instead of labels.
    """
    if not alpha > 0:
        raise ConfigError(f"partitioning.alpha: must be > 0, got {alpha}")
    _check(n_rows, n_banks, min_rows)
    for _ in range(MAX_DRAWS):
        proportions = rng.dirichlet(np.full(n_banks, alpha))
        sizes = np.floor(proportions * n_rows).astype(int)
        sizes[np.argmax(sizes)] += n_rows - sizes.sum()
        if sizes.min() >= min_rows:
            order = rng.permutation(n_rows)
            return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]
    raise ConfigError(
        f"partitioning.alpha: with alpha = {alpha} no draw in {MAX_DRAWS} gave every one of {n_banks} banks "
        f"{min_rows} rows (raise alpha or data.rows, or lower partitioning.min-rows)"
    )


def partition(scheme: str, labels: np.ndarray, n_banks: int, *, alpha: float, min_rows: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Dispatch on ``partitioning.scheme``: ``iid``, ``dirichlet`` or ``quantity``."""
    if scheme == "iid":
        return iid_partition(len(labels), n_banks, rng, min_rows=min_rows)
    if scheme == "dirichlet":
        return dirichlet_label_partition(labels, n_banks, alpha, rng, min_rows=min_rows)
    if scheme == "quantity":
        return quantity_skew_partition(len(labels), n_banks, alpha, rng, min_rows=min_rows)
    raise ConfigError(f"partitioning.scheme: must be one of iid, dirichlet, quantity, got {scheme!r}")


def coverage_subset(n_rows: int, coverage: float, rng: np.random.Generator) -> np.ndarray:
    """A random ``coverage`` share of ``n_rows`` rows (exact count, sorted): what a provider knows."""
    if not 0.0 <= coverage <= 1.0:
        raise ConfigError(f"partitioning.coverage: must be in [0, 1], got {coverage}")
    return np.sort(rng.choice(n_rows, size=int(round(coverage * n_rows)), replace=False))
