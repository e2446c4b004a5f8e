"""FEDERATION.toml and ``fedrisk node start``: every mistake is one line naming the bad key.

A data provider decides which of its columns join the federation (``features``
in the file, ``--features`` on its own host); a column it did not list is never
part of its schema.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from node_cli import node_start_argv

from fedrisk.errors import ConfigError
from fedrisk.federation.federation_file import load_federation_file

BANK = "id,y,inflow,overdrafts\n1,0,3.5,0\n2,1,1.0,4\n3,0,2.2,1\n"
TAX = "id,revenue,grade,filing_months\n1,10.0,A,24\n2,3.0,C,\n4,8.0,B,12\n"


def _write(tmp_path: Path, parties: str, algorithm: str = "[algorithm]\nepochs = 5\n") -> Path:
    (tmp_path / "bank.csv").write_text(BANK)
    (tmp_path / "tax.csv").write_text(TAX)
    path = tmp_path / "federation.toml"
    path.write_text(f'[federation]\nname = "t"\nmode = "vertical"\nalgorithm = "vertical_lr"\n\n{algorithm}\n{parties}')
    return path


BANK_ENTRY = '[[parties]]\nname = "bank"\nrole = "label_holder"\ndata = "bank.csv"\nid-column = "id"\nlabel-column = "y"\n\n'


def _tax(extra: str = "") -> str:
    return f'[[parties]]\nname = "tax"\nrole = "feature_holder"\ndata = "tax.csv"\nid-column = "id"\n{extra}\n'


def test_a_valid_file_keeps_only_the_columns_a_party_agreed_to_join(tmp_path):
    fed = load_federation_file(_write(tmp_path, BANK_ENTRY + _tax('features = ["revenue", "grade"]\ncategorical = ["grade"]')))
    bank, tax = fed.parties
    assert list(bank.schema["features"]) == ["inflow", "overdrafts"]
    assert bank.schema["label_column"] == "y"
    assert tax.schema["features"] == {"revenue": "float", "grade": "category"}  # filing_months was not agreed to
    assert fed.params["epochs"] == 5


@pytest.mark.parametrize(
    ("parties", "algorithm", "message"),
    [
        (BANK_ENTRY + _tax('colour = "red"'), None, r"^parties\[1\]\.colour: unknown key"),
        (BANK_ENTRY + _tax('features = ["revenue", "profit"]'), None, r"^parties\[1\]\.features: column 'profit' is not in tax\.csv"),
        (BANK_ENTRY + _tax('features = "revenue"'), None, r"^parties\[1\]\.features: expected a list"),
        (BANK_ENTRY + _tax('features = ["id", "revenue"]'), None, r"^parties\[1\]\.features: the ID and label"),
        (BANK_ENTRY + _tax('categorical = ["filing_months"]\nfeatures = ["revenue"]'), None, r"^parties\[1\]\.categorical: 'filing_months' is not a feature"),
        (BANK_ENTRY + _tax('allow-missing = "filing_months"'), None, r"^parties\[1\]\.allow-missing: expected a list"),
        (BANK_ENTRY + _tax('allow-missing = ["turnover"]'), None, r"^parties\[1\]\.allow-missing: column 'turnover' is not in"),
        (BANK_ENTRY + _tax('label-column = "revenue"'), None, r"^parties\[1\]\.label-column: a feature holder has no labels"),
        (BANK_ENTRY.replace('label-column = "y"\n', "") + _tax(), None, r"^parties\[0\]\.label-column: a label_holder needs"),
        (BANK_ENTRY.replace('"id"', '"sme"') + _tax(), None, r"^parties\[0\]\.id-column: column 'sme' is not in bank\.csv"),
        (BANK_ENTRY.replace("bank.csv", "nowhere.csv") + _tax(), None, r"^parties\[0\]\.data: file not found"),
        (BANK_ENTRY.replace("label_holder", "bank") + _tax(), None, r"^parties\[0\]\.role: 'bank' is not a vertical role"),
        (BANK_ENTRY + _tax(), '[algorithm]\nepochs = "five"\n', r"^algorithm\.epochs: expected int"),
        (BANK_ENTRY + _tax(), "[algorithm]\ntrees = 5\n", r"^algorithm\.trees: unknown key"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(tmp_path, parties, algorithm, message):
    path = _write(tmp_path, parties, algorithm or "[algorithm]\nepochs = 5\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_federation_file(path)
    assert "\n" not in str(err.value)


def _node_start(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "tax.csv").write_text(TAX)
    return subprocess.run(
        node_start_argv(
            name="tax", role="feature_holder", data=tmp_path / "tax.csv", id_column=None, superlink="127.0.0.1:1", state_dir=tmp_path / "state", extra=extra
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_node_start_refuses_a_feature_its_table_does_not_have(tmp_path):
    done = _node_start(tmp_path, "--features", "revenue, profit")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "node.features: column 'profit' is not in tax.csv" in errors[0]
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


def test_node_start_refuses_a_categorical_column_it_did_not_agree_to_join(tmp_path):
    done = _node_start(tmp_path, "--features", "revenue", "--categorical", "grade")
    assert done.returncode == 2
    assert "node.categorical: 'grade' is not a feature" in done.stderr
