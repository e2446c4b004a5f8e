"""A party's table with a declared schema: loading and validation.

Each party (bank, tax bureau, platform) holds one table keyed by an SME
identifier. :class:`TableSchema` declares the table's ID column, optional label
column and typed feature columns; :func:`load_party_table` reads CSV or Parquet
and :meth:`PartyTable.from_dataframe` takes a pandas DataFrame, both validating
the data against the schema with vectorised checks (a million rows in about
two seconds) and returning a :class:`PartyTable`.

Error locations
---------------
Every problem raises :class:`fedrisk.errors.DataValidationError` with a
one-line message naming the source, the place and the column, e.g.::

    bank.csv line 17, column 'revenue': cannot parse 'abc' as a number

For CSV files the place is the **file line, counting the header as line 1**
(so the first data row is line 2); this holds as long as no quoted field spans
several lines. Blank lines count as lines (they are reported as missing IDs)
except at the end of the file, where they are ignored. For Parquet files and
in-memory DataFrames, which have no lines, the place is ``row N``, the 1-based
position of the data row. When a table has several problems the message
reports the first one in file order and says how many more there are.

Normalisation
-------------
IDs are read as text and stripped of surrounding whitespace; credit codes are
upper-cased. Float, int and bool features become ``float64`` (int columns must
hold whole numbers, bool columns 0/1 or true/false); category features become
pandas categoricals whose levels are the declared ones, or the sorted observed
values when none are declared. Labels become ``int8`` 0/1.
"""

from __future__ import annotations

import csv
import enum
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import pandas as pd

from fedrisk.errors import DataValidationError
from fedrisk.data.credit_code import credit_code_validity_mask, validate_credit_code

__all__ = [
    "ColumnType",
    "IdFormat",
    "TableSchema",
    "PartyTable",
    "load_party_table",
]

IdFormat = Literal["credit_code", "opaque"]
_ID_FORMATS: tuple[str, ...] = ("credit_code", "opaque")

# Cell texts read as missing in feature and label columns (never in the ID column, where an
# opaque ID could legitimately be "NA").
_NA_TEXTS = [
    "", "NA", "N/A", "n/a", "NaN", "nan", "NAN", "-NaN", "-nan",
    "null", "NULL", "None", "#N/A", "<NA>",
]  # fmt: skip
_BOOL_TEXTS = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}
_MAX_SHOWN_CHARS = 40
_MISSING_NOT_ALLOWED = "missing value (column not declared in allow_missing)"


class ColumnType(enum.StrEnum):
    """Type of a feature column."""

    FLOAT = "float"
    INT = "int"
    CATEGORY = "category"
    BOOL = "bool"

    @classmethod
    def _missing_(cls, value: object) -> ColumnType | None:
        aliases = {"binary": cls.BOOL, "integer": cls.INT, "categorical": cls.CATEGORY}
        return aliases.get(str(value).lower()) if isinstance(value, str) else None


@dataclass(frozen=True, kw_only=True)
class TableSchema:
    """Declared layout of a party's table.

    Parameters
    ----------
    id_column
        Name of the column holding the SME identifier.
    label_column
        Name of the 0/1 label column, for the label holder; ``None`` otherwise.
    features
        Feature column names mapped to their :class:`ColumnType`, in model order.
    id_format
        ``"credit_code"`` (IDs must be valid GB 32100 codes) or ``"opaque"`` (any non-empty text).
    allow_missing
        Feature columns that may hold missing values; a missing value anywhere else is an error.
    categories
        Declared levels of category columns, in ordinal order; undeclared columns take
        their sorted observed values.
    """

    id_column: str
    label_column: str | None = None
    features: Mapping[str, ColumnType]
    id_format: IdFormat = "credit_code"
    allow_missing: frozenset[str] = field(default_factory=frozenset)
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id_column, str) or not self.id_column:
            raise DataValidationError("schema: 'id_column' must be a non-empty string")
        if self.label_column is not None and (not isinstance(self.label_column, str) or not self.label_column):
            raise DataValidationError("schema: 'label_column' must be a non-empty string or absent")
        if self.id_format not in _ID_FORMATS:
            raise DataValidationError(f"schema: 'id_format' must be one of {', '.join(_ID_FORMATS)}, got {self.id_format!r}")
        if not isinstance(self.features, Mapping):
            raise DataValidationError("schema: 'features' must map column names to types")
        features: dict[str, ColumnType] = {}
        for name, kind in self.features.items():
            if not isinstance(name, str) or not name:
                raise DataValidationError(f"schema: features: bad column name {name!r}")
            try:
                features[name] = ColumnType(kind)
            except ValueError:
                raise DataValidationError(
                    f"schema: features.{name}: unknown column type {kind!r} (expected one of {', '.join(t.value for t in ColumnType)})"
                ) from None
        for role, column in (("id_column", self.id_column), ("label_column", self.label_column)):
            if column is not None and column in features:
                raise DataValidationError(f"schema: {role} {column!r} is also declared as a feature")
        if self.label_column is not None and self.label_column == self.id_column:
            raise DataValidationError("schema: 'label_column' and 'id_column' are the same column")
        if isinstance(self.allow_missing, str):
            raise DataValidationError("schema: 'allow_missing' must be a list of feature columns")
        allow_missing = frozenset(self.allow_missing)
        unknown = sorted(allow_missing - features.keys())
        if unknown:
            raise DataValidationError(f"schema: allow_missing names column(s) that are not features: {_quoted(unknown)}")
        if not isinstance(self.categories, Mapping):
            raise DataValidationError("schema: 'categories' must map category columns to level lists")
        categories: dict[str, tuple[str, ...]] = {}
        for name, levels in self.categories.items():
            if features.get(name) is not ColumnType.CATEGORY:
                raise DataValidationError(f"schema: categories.{name}: {name!r} is not a feature of type 'category'")
            if isinstance(levels, str) or not all(isinstance(v, str) and v for v in levels):
                raise DataValidationError(f"schema: categories.{name}: levels must be a list of non-empty strings")
            levels = tuple(levels)
            if not levels or len(set(levels)) != len(levels):
                raise DataValidationError(f"schema: categories.{name}: levels must be non-empty and distinct")
            categories[name] = levels
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "allow_missing", allow_missing)
        object.__setattr__(self, "categories", categories)

    @property
    def feature_names(self) -> list[str]:
        """Feature column names in schema order."""
        return list(self.features)

    @property
    def columns(self) -> list[str]:
        """All declared columns: ID, label (if any), then features."""
        label = [self.label_column] if self.label_column is not None else []
        return [self.id_column, *label, *self.features]

    _KEYS = ("id_column", "label_column", "features", "id_format", "allow_missing", "categories")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TableSchema:
        """Build a schema from a JSON/TOML-style mapping (see :meth:`to_dict`).

        Raises
        ------
        DataValidationError
            One line naming the unknown, missing or bad key.
        """
        if not isinstance(d, Mapping):
            raise DataValidationError(f"schema: expected a mapping, got {type(d).__name__}")
        for key in d:
            if key not in cls._KEYS:
                raise DataValidationError(f"schema: unknown key {key!r} (expected one of {', '.join(cls._KEYS)})")
        for key in ("id_column", "features"):
            if key not in d:
                raise DataValidationError(f"schema: missing required key {key!r}")
        allow_missing = d.get("allow_missing", ())
        if not isinstance(allow_missing, (list, tuple, set, frozenset)):
            raise DataValidationError("schema: 'allow_missing' must be a list of feature columns")
        return cls(
            id_column=d["id_column"],
            label_column=d.get("label_column"),
            features=d["features"],
            id_format=d.get("id_format", "credit_code"),
            allow_missing=frozenset(allow_missing),
            categories=d.get("categories", {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON/TOML-friendly mapping; ``label_column`` is omitted when absent."""
        out: dict[str, Any] = {"id_column": self.id_column}
        if self.label_column is not None:
            out["label_column"] = self.label_column
        out["features"] = {name: kind.value for name, kind in self.features.items()}
        out["id_format"] = self.id_format
        out["allow_missing"] = [name for name in self.features if name in self.allow_missing]
        out["categories"] = {name: list(levels) for name, levels in self.categories.items()}
        return out


@dataclass(frozen=True, eq=False)  # compared by identity: element-wise DataFrame equality is ambiguous
class PartyTable:
    """One party's validated table.

    Attributes
    ----------
    name
        Party or table name (``"bank"``, ``"tax_bureau"``...).
    schema
        The schema the table was validated against.
    ids
        SME identifiers, a 1-d ``str`` array in table order, unique.
    features
        Feature columns in schema order, indexed by ID: ``float64`` for float/int/bool
        columns, pandas categoricals for category columns.
    labels
        ``int8`` 0/1 labels in table order, or ``None`` when the schema has no label column.
    source
        Where the table came from (file path or ``"<dataframe>"``), for messages.
    """

    name: str
    schema: TableSchema
    ids: np.ndarray
    features: pd.DataFrame
    labels: np.ndarray | None
    source: str = "<dataframe>"

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def feature_names(self) -> list[str]:
        """Feature column names in schema order."""
        return self.schema.feature_names

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        schema: TableSchema,
        source: str = "<dataframe>",
        *,
        name: str | None = None,
        strict: bool = True,
    ) -> PartyTable:
        """Validate a DataFrame against ``schema`` (same checks as :func:`load_party_table`).

        The ID may be a column or the (named) index. Problems are located as ``row N``,
        the 1-based row position.
        """
        if schema.id_column not in df.columns and df.index.name == schema.id_column:
            df = df.reset_index()
        locator = _Locator(source, header_lines=None)
        _check_columns(list(df.columns), schema, locator, strict)
        return _build(df, schema, locator, name=name if name is not None else source)

    def feature_matrix(self) -> np.ndarray:
        """Return the features as an ``(n_rows, n_features)`` float64 array.

        Category columns are encoded as ordinal codes ``0..k-1`` in declared (or sorted
        observed) level order; missing values stay NaN. Models that want one-hot
        encoding build it from :attr:`features`.
        """
        out = np.empty((len(self), len(self.schema.features)), dtype=np.float64)
        for j, (column, kind) in enumerate(self.schema.features.items()):
            values = self.features[column]
            if kind is ColumnType.CATEGORY:
                codes = values.cat.codes.to_numpy()
                out[:, j] = np.where(codes < 0, np.nan, codes)
            else:
                out[:, j] = values.to_numpy(dtype=np.float64)
        return out

    def to_dataframe(self) -> pd.DataFrame:
        """Return ID, label (if any) and features as plain columns with a RangeIndex.

        Int and bool columns come back as ``int64`` (nullable ``Int64`` when they hold
        missing values) so that a CSV written from it reads back unchanged.
        """
        columns: dict[str, Any] = {self.schema.id_column: self.ids}
        if self.schema.label_column is not None and self.labels is not None:
            columns[self.schema.label_column] = self.labels
        for column, kind in self.schema.features.items():
            values = self.features[column].reset_index(drop=True)
            if kind in (ColumnType.INT, ColumnType.BOOL):
                values = values.astype("Int64" if values.isna().any() else np.int64)
            columns[column] = values
        return pd.DataFrame(columns)


def load_party_table(
    path: str | Path,
    schema: TableSchema,
    *,
    name: str | None = None,
    strict: bool = True,
) -> PartyTable:
    """Read a party's table from CSV or Parquet and validate it against ``schema``.

    Parameters
    ----------
    path
        A ``.csv``, ``.csv.gz`` or ``.parquet`` file.
    schema
        The declared schema.
    name
        Table name; defaults to the file name without its suffixes.
    strict
        When true (the default) columns the schema does not declare are an error;
        when false they are dropped.

    Raises
    ------
    DataValidationError
        One line naming the file, the line (CSV, header = line 1) or row (Parquet)
        and the column; see the module docstring.
    """
    path = Path(path)
    source = str(path)
    lower_name = path.name.lower()
    suffix = ".csv.gz" if lower_name.endswith(".csv.gz") else path.suffix.lower()
    if name is None:
        name = path.name[: -len(suffix)] if suffix else path.name
    if suffix not in (".csv", ".csv.gz", ".parquet"):
        raise DataValidationError(f"{source}: unsupported file type {suffix or '(none)'!r} (expected .csv, .csv.gz or .parquet)")
    if not path.is_file():
        raise DataValidationError(f"{source}: file not found")
    if suffix == ".parquet":
        locator = _Locator(source, header_lines=None)
        df = _read_parquet(path, schema, locator, strict)
    else:
        locator = _Locator(source, header_lines=1)
        df = _read_csv(path, schema, locator, strict)
    return _build(df, schema, locator, name=name)


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Locator:
    """Turns a 0-based data-row position into the place named in messages."""

    source: str
    header_lines: int | None  # None: no lines (Parquet, DataFrame) -> "row N"

    def where(self, row: int | None = None) -> str:
        if row is None:
            return self.source
        if self.header_lines is None:
            return f"{self.source} row {row + 1}"
        return f"{self.source} line {row + 1 + self.header_lines}"

    def header(self) -> str:
        return f"{self.source} line 1 (header)" if self.header_lines else self.source


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read_csv(path: Path, schema: TableSchema, locator: _Locator, strict: bool) -> pd.DataFrame:
    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{locator.source}: file is empty (no header line)") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one line naming the file
        raise _unreadable(locator, exc) from None
    columns = [str(c) for c in header.iloc[0].tolist()] if len(header) else []
    used = _check_columns(columns, schema, locator, strict)
    text_columns = [schema.id_column] + [c for c, k in schema.features.items() if k is ColumnType.CATEGORY]
    try:
        # No usecols: with it pandas silently ignores rows that have too many fields.
        df = pd.read_csv(
            path,
            dtype={c: str for c in text_columns},
            keep_default_na=False,
            na_values={c: _NA_TEXTS for c in columns if c != schema.id_column},
            skip_blank_lines=False,  # so that data row k stays on file line k + 1
        )
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(locator, exc) from None
    df = _drop_trailing_blank_rows(df)
    last = df[columns[-1]] if len(df) else None
    if last is not None and (last.isna() | (last.astype(object) == "")).any():
        # pandas pads rows with too few fields with missing values; only such a file can have them.
        _raise_if_short_row(path, len(columns), locator)
    return df[used] if len(used) < len(columns) else df


def _raise_if_short_row(path: Path, n_fields: int, locator: _Locator) -> None:
    """Raise if a non-blank CSV row has fewer than ``n_fields`` fields (a slow, rare check)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if 0 < len(row) < n_fields and row != [""]:
                raise DataValidationError(f"{locator.source} line {reader.line_num}: malformed CSV: expected {n_fields} fields, saw {len(row)}")


def _read_parquet(path: Path, schema: TableSchema, locator: _Locator, strict: bool) -> pd.DataFrame:
    try:
        import pyarrow.parquet as pq

        columns = list(pq.read_schema(path).names)
        used = _check_columns(columns, schema, locator, strict)
        return pd.read_parquet(path, columns=used)
    except DataValidationError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(locator, exc) from None


_RAGGED = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _unreadable(locator: _Locator, exc: Exception) -> DataValidationError:
    message = _one_line(str(exc)) or type(exc).__name__
    ragged = _RAGGED.search(message)
    if ragged:
        expected, line, saw = ragged.groups()
        return DataValidationError(f"{locator.source} line {line}: malformed CSV: expected {expected} fields, saw {saw}")
    if isinstance(exc, UnicodeDecodeError):
        return DataValidationError(f"{locator.source}: cannot decode file as UTF-8 ({exc.reason})")
    if isinstance(exc, pd.errors.ParserError):
        message = message.removeprefix("Error tokenizing data. ").removeprefix("C error: ")
        return DataValidationError(f"{locator.source}: malformed CSV: {message}")
    return DataValidationError(f"{locator.source}: cannot read file: {message}")


def _drop_trailing_blank_rows(df: pd.DataFrame) -> pd.DataFrame:
    n = len(df)
    while n > 0:
        last = df.iloc[n - 1]
        if not all(pd.isna(v) or v == "" for v in last.tolist()):
            break
        n -= 1
    return df.iloc[:n] if n < len(df) else df


def _check_columns(columns: list[str], schema: TableSchema, locator: _Locator, strict: bool) -> list[str]:
    """Check a header against the schema; return the columns to read, in file order."""
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise DataValidationError(f"{locator.header()}, column {column!r}: column appears more than once")
        seen.add(column)
    declared = schema.columns
    missing = [c for c in declared if c not in seen]
    extra = [c for c in columns if c not in set(declared)]
    problems = []
    if missing:
        problems.append(f"missing declared column(s) {_quoted(missing)}")
    if extra and strict:
        problems.append(f"unexpected column(s) {_quoted(extra)} (pass strict=False to drop them)")
    if problems:
        raise DataValidationError(f"{locator.header()}: schema mismatch: {'; '.join(problems)}")
    return [c for c in columns if c in set(declared)]


def _quoted(names: list[str]) -> str:
    return ", ".join(repr(str(n)) for n in names)


def _show(value: object) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[: _MAX_SHOWN_CHARS - 4] + "...'"
    return text


# --- validation --------------------------------------------------------------------------------


@dataclass
class _Problems:
    """The first problem found in each check; the earliest one in the table is raised."""

    locator: _Locator
    column_order: dict[str, int]
    found: list[tuple[int, int, str, str, int]] = field(default_factory=list)

    def add(self, column: str, bad: np.ndarray, describe: Callable[[int], str]) -> None:
        """Record a problem in ``column`` at the first ``True`` of mask ``bad``."""
        if not bad.any():
            return
        rows = np.flatnonzero(bad)
        first = int(rows[0])
        self.found.append((first, self.column_order[column], column, describe(first), rows.size))

    def raise_first(self) -> None:
        if not self.found:
            return
        row, _, column, text, _ = min(self.found)
        total = sum(count for *_, count in self.found)
        more = f" ({total - 1} more problem(s) in the table)" if total > 1 else ""
        raise DataValidationError(f"{self.locator.where(row)}, column {column!r}: {text}{more}")


def _build(df: pd.DataFrame, schema: TableSchema, locator: _Locator, *, name: str) -> PartyTable:
    if len(df) == 0:
        raise DataValidationError(f"{locator.source}: empty table (no data rows)")
    problems = _Problems(locator, {c: i for i, c in enumerate(schema.columns)})
    ids = _validate_ids(df[schema.id_column], schema, locator, problems)
    labels = None
    if schema.label_column is not None:
        labels = _validate_labels(df[schema.label_column], schema.label_column, problems)
    columns: dict[str, Any] = {}
    for column, kind in schema.features.items():
        allow_missing = column in schema.allow_missing
        if kind is ColumnType.CATEGORY:
            columns[column] = _validate_category(df[column], column, schema.categories.get(column), allow_missing, problems)
        else:
            columns[column] = _validate_number(df[column], column, kind, allow_missing, problems)
    problems.raise_first()
    index = pd.Index(ids, name=schema.id_column)
    features = pd.DataFrame(columns, index=index) if columns else pd.DataFrame(index=index)
    return PartyTable(name=name, schema=schema, ids=ids, features=features, labels=labels, source=locator.source)


def _validate_ids(raw: pd.Series, schema: TableSchema, locator: _Locator, problems: _Problems) -> np.ndarray:
    column = schema.id_column
    if pd.api.types.is_float_dtype(raw.dtype) and (raw.dropna() % 1 == 0).all():
        # Integer IDs that went through a float column (NaN among them): 25115, not 25115.0.
        raw = raw.astype("Int64")
    text = _as_text(raw).fillna("").str.strip()
    if schema.id_format == "credit_code":
        text = text.str.upper()
    ids = np.asarray(text.to_numpy(dtype=object), dtype=str)
    missing = ids == ""
    problems.add(column, missing, lambda _: "missing ID")
    if schema.id_format == "credit_code":
        invalid = ~credit_code_validity_mask(ids) & ~missing
        problems.add(
            column,
            invalid,
            lambda i: f"invalid credit code {_show(ids[i])}: {_credit_code_reason(ids[i])}",
        )
    repeated = text.duplicated(keep="first").to_numpy() & ~missing
    if repeated.any():
        first_repeat = int(np.flatnonzero(repeated)[0])
        original = int(np.flatnonzero(ids == ids[first_repeat])[0])
        problems.add(
            column,
            repeated,
            lambda i: f"duplicate ID {_show(ids[i])} (first on {_place(locator, original)})",
        )
    return ids


def _as_text(raw: pd.Series) -> pd.Series:
    """Return ``raw`` as a pandas string Series, missing values kept missing."""
    if pd.api.types.is_string_dtype(raw.dtype) and not raw.dtype == object:
        return raw
    present = raw.notna()
    return raw.astype(object).where(present, None).astype("str").where(present, np.nan)


def _place(locator: _Locator, row: int) -> str:
    return locator.where(row).removeprefix(locator.source + " ")


def _credit_code_reason(code: str) -> str:
    try:
        validate_credit_code(code)
    except ValueError as exc:
        return str(exc)
    return "invalid"  # pragma: no cover - the mask and the scalar check agree


def _as_numbers(raw: pd.Series, bool_texts: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(values, unparsable)``: float64 values (NaN where missing or bad) and the bad mask."""
    if pd.api.types.is_bool_dtype(raw.dtype) or pd.api.types.is_numeric_dtype(raw.dtype):
        # The fast path: the CSV reader or the caller already produced numbers.
        return raw.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(raw), dtype=bool)
    parsed = pd.to_numeric(raw, errors="coerce")
    if bool_texts:
        words = raw.astype(str).str.strip().str.lower().map(_BOOL_TEXTS)
        parsed = parsed.fillna(words)
    values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    return values, raw.notna().to_numpy() & np.isnan(values)


def _validate_number(raw: pd.Series, column: str, kind: ColumnType, allow_missing: bool, problems: _Problems) -> np.ndarray:
    values, unparsable = _as_numbers(raw, bool_texts=kind is ColumnType.BOOL)
    problems.add(column, unparsable, lambda i: f"cannot parse {_show(raw.iloc[i])} as a number")
    missing = np.isnan(values) & ~unparsable
    if not allow_missing:
        problems.add(column, missing, lambda _: _MISSING_NOT_ALLOWED)
    with np.errstate(invalid="ignore"):
        infinite = np.isinf(values)
        problems.add(column, infinite, lambda i: f"non-finite value {_show(raw.iloc[i])}")
        if kind is ColumnType.INT:
            fractional = np.isfinite(values) & (values != np.round(values))
            problems.add(column, fractional, lambda i: f"expected a whole number, got {_show(raw.iloc[i])}")
        elif kind is ColumnType.BOOL:
            not_binary = np.isfinite(values) & (values != 0) & (values != 1)
            problems.add(column, not_binary, lambda i: f"expected 0 or 1, got {_show(raw.iloc[i])}")
    return values


def _validate_labels(raw: pd.Series, column: str, problems: _Problems) -> np.ndarray:
    values, unparsable = _as_numbers(raw, bool_texts=False)
    missing = np.isnan(values) & ~unparsable
    problems.add(column, missing, lambda _: "missing label")
    not_binary = (unparsable | ~np.isnan(values)) & (values != 0) & (values != 1)
    problems.add(column, not_binary, lambda i: f"label must be 0 or 1, got {_show(raw.iloc[i])}")
    return np.where(values == 1, 1, 0).astype(np.int8)


def _validate_category(
    raw: pd.Series,
    column: str,
    levels: tuple[str, ...] | None,
    allow_missing: bool,
    problems: _Problems,
) -> pd.Categorical:
    present = raw.notna().to_numpy()
    text = _as_text(raw)
    if levels is None:
        levels = tuple(sorted(text[present].unique()))
    codes = pd.Index(list(levels)).get_indexer(text)
    undeclared = present & (codes < 0)
    values = pd.Categorical.from_codes(np.where(undeclared, -1, codes), categories=list(levels))
    expected = ", ".join(levels)
    problems.add(
        column,
        undeclared,
        lambda i: f"{_show(text.iloc[i])} is not a declared level (expected one of {expected})",
    )
    if not allow_missing:
        problems.add(column, ~present, lambda _: _MISSING_NOT_ALLOWED)
    return values
