"""The synthetic SME generator: determinism, coverage, labels, IDs, signal and CSV round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from fedrisk.data.credit_code import credit_code_validity_mask
from fedrisk.data.synthetic import (
    BANK_SCHEMA,
    PARTY_SCHEMAS,
    PLATFORM_SCHEMA,
    TAX_BUREAU_SCHEMA,
    SyntheticSMEData,
    generate_sme_data,
)
from fedrisk.data.table import ColumnType, load_party_table

N_SMES = 20_000


@pytest.fixture(scope="module")
def data() -> SyntheticSMEData:
    return generate_sme_data(N_SMES, seed=3)


def test_schemas_declare_the_documented_columns() -> None:
    assert BANK_SCHEMA.label_column == "default_12m"
    assert BANK_SCHEMA.feature_names == [
        "account_tenure_months", "monthly_inflow", "monthly_outflow", "inflow_volatility",
        "overdraft_count_12m", "past_delinquencies", "loan_balance", "has_collateral",
    ]  # fmt: skip
    assert TAX_BUREAU_SCHEMA.feature_names == [
        "declared_revenue", "revenue_growth", "vat_invoice_count",
        "months_continuous_filing", "tax_credit_grade", "tax_arrears_flag",
    ]  # fmt: skip
    assert TAX_BUREAU_SCHEMA.categories["tax_credit_grade"] == ("A", "B", "M", "C", "D")
    assert PLATFORM_SCHEMA.feature_names == [
        "gmv", "order_count", "return_rate", "rating", "months_active", "utility_on_time_ratio",
    ]  # fmt: skip
    assert all(s.id_format == "credit_code" for s in PARTY_SCHEMAS.values())
    assert all(s.label_column is None for s in (TAX_BUREAU_SCHEMA, PLATFORM_SCHEMA))


def test_same_seed_gives_byte_identical_csvs(tmp_path: Path) -> None:
    first = generate_sme_data(2_000, seed=11).write_csv(tmp_path / "a")
    second = generate_sme_data(2_000, seed=11).write_csv(tmp_path / "b")
    other = generate_sme_data(2_000, seed=12).write_csv(tmp_path / "c")
    assert set(first) == {"bank", "tax_bureau", "platform"}
    for party, path in first.items():
        assert path.name == f"{party}.csv"
        assert path.read_bytes() == second[party].read_bytes()
        assert path.read_bytes() != other[party].read_bytes()


def test_coverage_and_outsiders(data: SyntheticSMEData) -> None:
    bank_ids = set(data.bank.ids.tolist())
    assert len(data.bank) == N_SMES
    for table, coverage in ((data.tax_bureau, 0.9), (data.platform, 0.6)):
        ids = table.ids.tolist()
        insiders = sum(i in bank_ids for i in ids)
        outsiders = len(ids) - insiders
        assert abs(insiders / N_SMES - coverage) <= 0.02
        assert outsiders > 0
        assert abs(outsiders / len(ids) - 0.1) <= 0.02
    # Outsiders of the two providers overlap partly; some SMEs only the providers know.
    tax_out = set(data.tax_bureau.ids.tolist()) - bank_ids
    platform_out = set(data.platform.ids.tolist()) - bank_ids
    assert tax_out & platform_out and tax_out - platform_out


def test_coverage_parameters_are_honoured() -> None:
    small = generate_sme_data(5_000, seed=1, tax_coverage=0.5, platform_coverage=1.0, outsider_fraction=0.0)
    bank_ids = set(small.bank.ids.tolist())
    assert len(small.tax_bureau) == 2_500 and set(small.tax_bureau.ids.tolist()) <= bank_ids
    assert set(small.platform.ids.tolist()) == bank_ids
    with pytest.raises(ValueError, match="outsider_fraction"):
        generate_sme_data(10, outsider_fraction=1.0)
    with pytest.raises(ValueError, match="tax_coverage"):
        generate_sme_data(10, tax_coverage=1.5)


def test_default_rate(data: SyntheticSMEData) -> None:
    assert data.bank.labels is not None
    assert 0.04 <= data.bank.labels.mean() <= 0.08


def test_ids_are_valid_unique_credit_codes_and_rows_are_shuffled(data: SyntheticSMEData) -> None:
    for table in data.parties.values():
        assert credit_code_validity_mask(table.ids).all()
        assert len(set(table.ids.tolist())) == len(table)
    # Rows are in independent random orders: the tables' common IDs do not line up.
    common = np.isin(data.tax_bureau.ids[:1000], data.bank.ids[:1000])
    assert common.mean() < 0.2


def test_missing_values_only_where_declared(data: SyntheticSMEData) -> None:
    for party, table in data.parties.items():
        missing = table.features.isna().any()
        assert set(missing[missing].index) <= set(PARTY_SCHEMAS[party].allow_missing)
    platform = data.platform.features
    no_orders = platform["order_count"] == 0
    assert no_orders.any()
    assert (platform["rating"].isna() == no_orders).all()
    assert (platform["return_rate"].isna() == no_orders).all()


def test_distributions_are_plausible(data: SyntheticSMEData) -> None:
    bank, tax = data.bank.features, data.tax_bureau.features
    revenue = tax["declared_revenue"]
    assert (revenue > 0).all() and revenue.mean() > 1.3 * revenue.median()  # right-skewed
    assert (bank["monthly_inflow"] > 0).all() and (bank["loan_balance"] >= 0).all()
    grades = tax["tax_credit_grade"].value_counts(normalize=True)
    assert set(grades.index) == {"A", "B", "M", "C", "D"} and grades["D"] < grades["B"]
    rating = data.platform.features["rating"].dropna()
    assert rating.between(1, 5).all()


def _standardised_block(frame: pd.DataFrame, train: np.ndarray, covered: np.ndarray | None) -> np.ndarray:
    """Standardise with training statistics; rows the party does not cover, and NaNs, become 0."""
    values = frame.to_numpy(dtype=np.float64)
    mean = np.nanmean(values[train], axis=0)
    std = np.nanstd(values[train], axis=0)
    block = np.nan_to_num((values - mean) / np.where(std > 0, std, 1.0), nan=0.0)
    if covered is None:
        return block
    return np.column_stack([block, covered.astype(np.float64)])


def _design(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric design columns: categories one-hot, everything else as is."""
    parts = []
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            parts.append(pd.get_dummies(frame[column], prefix=column, dtype=np.float64))
        else:
            parts.append(frame[[column]].astype(np.float64))
    return pd.concat(parts, axis=1)


def test_joint_model_beats_bank_only_model(data: SyntheticSMEData) -> None:
    joined = data.centralised_table()
    y = joined.pop(BANK_SCHEMA.label_column).to_numpy()
    train, test = train_test_split(np.arange(y.size), test_size=0.3, stratify=y, random_state=0)
    bank = _standardised_block(_design(joined[BANK_SCHEMA.feature_names]), train, None)
    tax = _standardised_block(_design(joined[TAX_BUREAU_SCHEMA.feature_names]), train, joined["in_tax_bureau"].to_numpy())
    platform = _standardised_block(_design(joined[PLATFORM_SCHEMA.feature_names]), train, joined["in_platform"].to_numpy())
    aucs = {}
    for name, x in (("bank", bank), ("joint", np.column_stack([bank, tax, platform]))):
        model = LogisticRegression(max_iter=1000).fit(x[train], y[train])
        aucs[name] = roc_auc_score(y[test], model.predict_proba(x[test])[:, 1])
    assert aucs["joint"] - aucs["bank"] >= 0.05, aucs


def test_csv_round_trip_through_the_loader(data: SyntheticSMEData, tmp_path: Path) -> None:
    small = generate_sme_data(3_000, seed=5)
    paths = small.write_csv(tmp_path)
    for party, table in small.parties.items():
        loaded = load_party_table(paths[party], PARTY_SCHEMAS[party])
        assert loaded.name == party
        assert (loaded.ids == table.ids).all()
        pd.testing.assert_frame_equal(loaded.features, table.features)
        if table.labels is not None:
            assert loaded.labels is not None and (loaded.labels == table.labels).all()
    # Int and bool columns are written without a decimal point.
    header, first = paths["bank"].read_text().splitlines()[:2]
    assert header.split(",")[0] == "credit_code" and header.split(",")[1] == "default_12m"
    assert "." not in first.split(",")[2]  # account_tenure_months
    assert ColumnType.INT is BANK_SCHEMA.features["account_tenure_months"]


def test_centralised_table_joins_on_bank_ids(data: SyntheticSMEData) -> None:
    joined = data.centralised_table()
    assert joined.index.tolist() == data.bank.ids.tolist()
    assert abs(joined["in_tax_bureau"].mean() - 0.9) < 0.001
    uncovered = joined["in_platform"] == 0
    assert joined.loc[uncovered, "gmv"].isna().all() and joined.loc[~uncovered, "gmv"].notna().all()
