"""Loading and validating a party's table: one test per error kind, happy paths, real data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrisk.errors import DataValidationError
from fedrisk.data.table import ColumnType, PartyTable, TableSchema, load_party_table

# Valid credit codes (see tests/test_credit_code.py for where these come from).
HUAWEI = "914403001922038216"
ALIBABA = "91330100716105852F"
TENCENT = "9144030071526726XG"
XIAOMI = "91110108551385082Q"

SCHEMA = TableSchema(
    id_column="id",
    label_column="default",
    features={
        "revenue": ColumnType.FLOAT,
        "staff": ColumnType.INT,
        "grade": ColumnType.CATEGORY,
        "collateral": ColumnType.BOOL,
        "rating": ColumnType.FLOAT,
    },
    id_format="credit_code",
    allow_missing=frozenset({"rating"}),
    categories={"grade": ("A", "B", "C")},
)
HEADER = "id,default,revenue,staff,grade,collateral,rating"
GOOD_ROWS = [
    f"{HUAWEI},0,1200.5,12,A,1,4.5",
    f"{ALIBABA},1,300,3,C,0,",
    f"{TENCENT},0,55.25,7,B,1,3.9",
    f"{XIAOMI},0,980,40,A,0,4.1",
]


def write_csv(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "bank.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def load_error(path: Path, schema: TableSchema = SCHEMA, **kwargs: object) -> str:
    with pytest.raises(DataValidationError) as info:
        load_party_table(path, schema, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def with_row(index: int, row: str) -> list[str]:
    rows = list(GOOD_ROWS)
    rows[index] = row
    return rows


# --- happy paths -------------------------------------------------------------------------------


def test_loads_valid_csv(tmp_path: Path) -> None:
    table = load_party_table(write_csv(tmp_path, GOOD_ROWS), SCHEMA)
    assert table.name == "bank" and len(table) == 4
    assert table.ids.tolist() == [HUAWEI, ALIBABA, TENCENT, XIAOMI]
    assert table.labels is not None and table.labels.dtype == np.int8
    assert table.labels.tolist() == [0, 1, 0, 0]
    assert list(table.features.columns) == SCHEMA.feature_names
    assert table.features.index.name == "id" and table.features.index.tolist() == table.ids.tolist()
    assert table.features["staff"].dtype == np.float64
    assert isinstance(table.features["grade"].dtype, pd.CategoricalDtype)
    assert list(table.features["grade"].cat.categories) == ["A", "B", "C"]
    assert np.isnan(table.features.loc[ALIBABA, "rating"])


def test_feature_matrix_uses_ordinal_level_codes(tmp_path: Path) -> None:
    matrix = load_party_table(write_csv(tmp_path, GOOD_ROWS), SCHEMA).feature_matrix()
    assert matrix.dtype == np.float64 and matrix.shape == (4, 5)
    assert matrix[:, 2].tolist() == [0.0, 2.0, 1.0, 0.0]  # A, C, B, A by declared order
    assert matrix[0].tolist() == [1200.5, 12.0, 0.0, 1.0, 4.5]
    assert np.isnan(matrix[1, 4])


def test_to_dataframe_round_trips_through_from_dataframe(tmp_path: Path) -> None:
    table = load_party_table(write_csv(tmp_path, GOOD_ROWS), SCHEMA)
    frame = table.to_dataframe()
    assert list(frame.columns) == SCHEMA.columns
    assert frame["staff"].dtype == np.int64 and frame["collateral"].dtype == np.int64
    again = PartyTable.from_dataframe(frame, SCHEMA)
    assert (again.ids == table.ids).all() and again.features.equals(table.features)
    # The ID may also come as the index, as in PartyTable.features.
    indexed = PartyTable.from_dataframe(frame.set_index("id"), SCHEMA)
    assert (indexed.ids == table.ids).all()


def test_loads_parquet_and_gzipped_csv(tmp_path: Path) -> None:
    csv_table = load_party_table(write_csv(tmp_path, GOOD_ROWS), SCHEMA)
    parquet = tmp_path / "bank.parquet"
    csv_table.to_dataframe().to_parquet(parquet)
    from_parquet = load_party_table(parquet, SCHEMA)
    assert from_parquet.name == "bank"
    assert (from_parquet.ids == csv_table.ids).all()
    assert from_parquet.features.equals(csv_table.features)
    gz = tmp_path / "bank.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "bank.csv").read_bytes()))
    from_gz = load_party_table(gz, SCHEMA, name="the-bank")
    assert from_gz.name == "the-bank" and from_gz.features.equals(csv_table.features)


def test_ids_are_normalised_and_text_ids_stay_text(tmp_path: Path) -> None:
    rows = with_row(0, f"  {HUAWEI.lower()} ,0,1200.5,12,A,1,4.5")
    assert load_party_table(write_csv(tmp_path, rows), SCHEMA).ids[0] == HUAWEI
    opaque = TableSchema(id_column="id", features={"x": ColumnType.FLOAT}, id_format="opaque")
    path = write_csv(tmp_path, ["007,1.0", "NA,2.0", "None,3"], header="id,x", name="t.csv")
    assert load_party_table(path, opaque).ids.tolist() == ["007", "NA", "None"]


def test_bool_words_and_trailing_blank_lines(tmp_path: Path) -> None:
    rows = with_row(0, f"{HUAWEI},0,1200.5,12,A,true,4.5") + ["", ""]
    table = load_party_table(write_csv(tmp_path, with_row(1, f"{ALIBABA},1,300,3,C,No,")[:1] + rows[1:]), SCHEMA)
    assert len(table) == 4
    assert table.features["collateral"].tolist()[:2] == [1.0, 0.0]


def test_extra_columns_are_dropped_when_not_strict(tmp_path: Path) -> None:
    rows = [r + ",x" for r in GOOD_ROWS]
    path = write_csv(tmp_path, rows, header=HEADER + ",comment")
    table = load_party_table(path, SCHEMA, strict=False)
    assert list(table.features.columns) == SCHEMA.feature_names


def test_real_default_credit_host_file(default_credit_dir: Path) -> None:
    schema = TableSchema(id_column="id", features={f"x{i}": ColumnType.FLOAT for i in range(10)}, id_format="opaque")
    table = load_party_table(default_credit_dir / "default_credit_hetero_host.csv", schema)
    assert len(table) == 30_000 and table.labels is None
    assert table.ids[:2].tolist() == ["25115", "2346"]
    assert len(set(table.ids.tolist())) == 30_000
    assert table.feature_matrix().shape == (30_000, 10)
    assert not np.isnan(table.feature_matrix()).any()


# --- one test per error kind -------------------------------------------------------------------


def test_missing_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path, with_row(2, ",0,55.25,7,B,1,3.9"))
    message = load_error(path)
    assert message.startswith(f"{path} line 4, column 'id': missing ID")


def test_blank_line_inside_the_table_keeps_line_numbers(tmp_path: Path) -> None:
    path = write_csv(tmp_path, [GOOD_ROWS[0], "", *GOOD_ROWS[1:]])
    assert load_error(path).startswith(f"{path} line 3, column 'id': missing ID")


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = write_csv(tmp_path, with_row(3, f"{ALIBABA},0,980,40,A,0,4.1"))
    message = load_error(path)
    assert message == f"{path} line 5, column 'id': duplicate ID '{ALIBABA}' (first on line 3)"


def test_invalid_credit_code_says_why(tmp_path: Path) -> None:
    bad = HUAWEI[:17] + "7"
    path = write_csv(tmp_path, with_row(1, f"{bad},1,300,3,C,0,"))
    message = load_error(path)
    assert message.startswith(f"{path} line 3, column 'id': invalid credit code '{bad}'")
    assert "check character mismatch: expected '6', got '7'" in message
    short = write_csv(tmp_path, with_row(0, "12345,0,1,1,A,1,4"), name="short.csv")
    assert "wrong length" in load_error(short)


def test_unparsable_number_shows_the_value(tmp_path: Path) -> None:
    path = write_csv(tmp_path, with_row(2, f"{TENCENT},0,abc,7,B,1,3.9"))
    message = load_error(path)
    assert message == f"{path} line 4, column 'revenue': cannot parse 'abc' as a number"


def test_unparsable_value_is_truncated(tmp_path: Path) -> None:
    path = write_csv(tmp_path, with_row(0, f"{HUAWEI},0,{'x' * 500},12,A,1,4.5"))
    message = load_error(path)
    assert "line 2, column 'revenue': cannot parse 'xxx" in message and len(message) < len(str(path)) + 120


def test_missing_value_where_not_allowed(tmp_path: Path) -> None:
    path = write_csv(tmp_path, with_row(1, f"{ALIBABA},1,,3,C,0,"))
    message = load_error(path)
    assert message.startswith(f"{path} line 3, column 'revenue': missing value")
    assert "allow_missing" in message


def test_label_not_zero_or_one(tmp_path: Path) -> None:
    path = write_csv(tmp_path, with_row(3, f"{XIAOMI},2,980,40,A,0,4.1"))
    assert load_error(path) == f"{path} line 5, column 'default': label must be 0 or 1, got 2"
    text = write_csv(tmp_path, with_row(0, f"{HUAWEI},yes,1,1,A,1,4"), name="text.csv")
    assert "line 2, column 'default': label must be 0 or 1, got 'yes'" in load_error(text)
    missing = write_csv(tmp_path, with_row(0, f"{HUAWEI},,1,1,A,1,4"), name="missing.csv")
    assert "line 2, column 'default': missing label" in load_error(missing)


def test_int_bool_category_and_infinite_values(tmp_path: Path) -> None:
    cases = {
        f"{HUAWEI},0,1200.5,2.5,A,1,4.5": "column 'staff': expected a whole number, got 2.5",
        f"{HUAWEI},0,1200.5,12,A,2,4.5": "column 'collateral': expected 0 or 1, got 2",
        f"{HUAWEI},0,1200.5,12,E,1,4.5": "column 'grade': 'E' is not a declared level (expected one of A, B, C)",
        f"{HUAWEI},0,inf,12,A,1,4.5": "column 'revenue': non-finite value inf",
    }
    for i, (row, expected) in enumerate(cases.items()):
        path = write_csv(tmp_path, with_row(0, row), name=f"case{i}.csv")
        assert load_error(path) == f"{path} line 2, {expected}"


def test_missing_declared_column(tmp_path: Path) -> None:
    rows = [r.rsplit(",", 1)[0] for r in GOOD_ROWS]
    path = write_csv(tmp_path, rows, header=HEADER.rsplit(",", 1)[0])
    message = load_error(path)
    assert message == f"{path} line 1 (header): schema mismatch: missing declared column(s) 'rating'"


def test_unexpected_extra_columns_listed(tmp_path: Path) -> None:
    rows = [r + ",x,y" for r in GOOD_ROWS]
    path = write_csv(tmp_path, rows, header=HEADER + ",comment,branch")
    message = load_error(path)
    assert message.startswith(f"{path} line 1 (header): schema mismatch: unexpected column(s) 'comment', 'branch'")
    assert "strict=False" in message


def test_duplicated_header_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path, [r + ",1" for r in GOOD_ROWS], header=HEADER + ",staff")
    assert load_error(path) == f"{path} line 1 (header), column 'staff': column appears more than once"


def test_empty_table_and_empty_file(tmp_path: Path) -> None:
    header_only = write_csv(tmp_path, [])
    assert load_error(header_only) == f"{header_only}: empty table (no data rows)"
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert load_error(empty) == f"{empty}: file is empty (no header line)"


def test_ragged_csv_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path, with_row(2, f"{TENCENT},0,55.25,7,B,1,3.9,extra"))
    assert load_error(path) == f"{path} line 4: malformed CSV: expected 7 fields, saw 8"


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    assert load_error(missing) == f"{missing}: file not found"
    wrong_kind = tmp_path / "bank.xlsx"
    wrong_kind.write_bytes(b"x")
    assert "unsupported file type '.xlsx'" in load_error(wrong_kind)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    assert load_error(broken).startswith(f"{broken}: cannot read file:")
    latin = tmp_path / "latin.csv"
    latin.write_bytes((HEADER + "\n").encode() + f"{HUAWEI},0,1,1,A,1,\xe9\n".encode("latin-1"))
    assert load_error(latin).startswith(f"{latin}: cannot decode file as UTF-8")


def test_first_problem_in_file_order_is_reported_with_a_count(tmp_path: Path) -> None:
    rows = [
        f"{HUAWEI},0,1200.5,12,A,1,4.5",
        f"{ALIBABA},1,300,3,Z,0,",  # line 3: bad level (grade)
        f"{TENCENT},0,oops,7,B,1,3.9",  # line 4: bad number
        f"{HUAWEI},0,980,40,A,0,4.1",  # line 5: duplicate
    ]
    message = load_error(write_csv(tmp_path, rows))
    assert "line 3, column 'grade'" in message and message.endswith("(2 more problem(s) in the table)")


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    frame = load_party_table(write_csv(tmp_path, GOOD_ROWS), SCHEMA).to_dataframe()
    frame.loc[2, "revenue"] = np.nan
    path = tmp_path / "bank.parquet"
    frame.to_parquet(path)
    assert load_error(path).startswith(f"{path} row 3, column 'revenue': missing value")


def test_dataframe_errors_name_the_source_and_row() -> None:
    frame = pd.DataFrame({"id": ["a", "b", "a"], "x": [1.0, 2.0, 3.0]})
    schema = TableSchema(id_column="id", features={"x": ColumnType.FLOAT}, id_format="opaque")
    with pytest.raises(DataValidationError, match=r"^<dataframe> row 3, column 'id': duplicate ID 'a' \(first on row 1\)$"):
        PartyTable.from_dataframe(frame, schema)
    with pytest.raises(DataValidationError, match=r"^mine row 2, column 'x': cannot parse 'two'"):
        PartyTable.from_dataframe(frame.assign(id=["a", "b", "c"], x=[1, "two", 3]), schema, source="mine")


# --- schema ------------------------------------------------------------------------------------


def test_schema_dict_round_trip() -> None:
    d = SCHEMA.to_dict()
    assert d["features"]["grade"] == "category" and d["allow_missing"] == ["rating"]
    assert TableSchema.from_dict(d) == SCHEMA
    no_label = TableSchema.from_dict({"id_column": "id", "features": {"x": "binary"}, "id_format": "opaque"})
    assert no_label.features["x"] is ColumnType.BOOL and "label_column" not in no_label.to_dict()


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        ({"id_column": "id", "features": {}, "colour": 1}, "schema: unknown key 'colour'"),
        ({"features": {}}, "schema: missing required key 'id_column'"),
        ({"id_column": "id", "features": {"x": "money"}}, "schema: features.x: unknown column type 'money'"),
        ({"id_column": "id", "features": {"x": "float"}, "allow_missing": ["y"]}, "not features: 'y'"),
        ({"id_column": "id", "features": {"x": "float"}, "categories": {"x": ["a"]}}, "categories.x: 'x' is not a feature of type 'category'"),
        ({"id_column": "id", "features": {"x": "float"}, "id_format": "uuid"}, "schema: 'id_format' must be one of"),
        ({"id_column": "x", "features": {"x": "float"}}, "schema: id_column 'x' is also declared as a feature"),
        ({"id_column": "id", "features": {"x": "float"}, "allow_missing": "x"}, "'allow_missing' must be a list"),
    ],
)
def test_schema_errors_are_one_line_naming_the_key(d: dict, expected: str) -> None:
    with pytest.raises(DataValidationError) as info:
        TableSchema.from_dict(d)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_short_csv_row(tmp_path: Path) -> None:
    # pandas pads short rows with missing values; the loader must still call them malformed.
    path = write_csv(tmp_path, with_row(1, f"{ALIBABA},1,300,3,C"))
    assert load_error(path) == f"{path} line 3: malformed CSV: expected 7 fields, saw 5"


def test_ragged_row_is_caught_when_not_strict(tmp_path: Path) -> None:
    rows = [r + ",x" for r in GOOD_ROWS]
    rows[1] += ",surplus"
    path = write_csv(tmp_path, rows, header=HEADER + ",comment")
    assert load_error(path, strict=False) == f"{path} line 3: malformed CSV: expected 8 fields, saw 9"


def test_excel_style_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeff" + "\r\n".join([HEADER, *GOOD_ROWS]) + "\r\n").encode("utf-8"))
    table = load_party_table(path, SCHEMA)
    assert table.ids.tolist() == [HUAWEI, ALIBABA, TENCENT, XIAOMI]


def test_undeclared_category_levels_are_sorted_observed_values() -> None:
    schema = TableSchema(
        id_column="id",
        features={"sector": ColumnType.CATEGORY},
        id_format="opaque",
        allow_missing=frozenset({"sector"}),
    )
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "sector": ["retail", None, "agri", "retail"]})
    table = PartyTable.from_dataframe(frame, schema, name="platform")
    assert list(table.features["sector"].cat.categories) == ["agri", "retail"]
    matrix = table.feature_matrix()
    assert matrix[[0, 2, 3], 0].tolist() == [1.0, 0.0, 1.0] and np.isnan(matrix[1, 0])


def test_parquet_extra_columns_dropped_when_not_strict(tmp_path: Path) -> None:
    frame = load_party_table(write_csv(tmp_path, GOOD_ROWS), SCHEMA).to_dataframe()
    path = tmp_path / "bank.parquet"
    frame.assign(branch="x").to_parquet(path)
    assert "unexpected column(s) 'branch'" in load_error(path)
    assert list(load_party_table(path, SCHEMA, strict=False).features.columns) == SCHEMA.feature_names
