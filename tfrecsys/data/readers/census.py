"""UCI Census-Income (KDD): ``census-income.data.gz`` (train, 199,523 rows) and ``census-income.test.gz``
(99,762 rows), the multi-task data of the MMoE paper.

Comma-separated (values carry a leading space), no header, 42 fields: 41 attributes in the order of
``census-income.names`` and the income label (``- 50000.`` or ``50000+.``). ``?`` marks a missing value and
is kept as its own category. DeepCTR's sample prepends a row index (43 fields); it is dropped.

Two labels follow the MMoE paper: ``income_50k`` (income over 50K) and ``never_married``
(``marital_stat == "Never married"``).
"""

import dataclasses
import glob
import os

from tfrecsys.data.readers.common import (RowError, Source, SourceFile, one_record, parse_file, to_columns,
                                          to_float)

DATASET = "census-income-kdd"
CONTINUOUS = ("age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
              "instance_weight", "num_persons_worked_for_employer", "weeks_worked_in_year")
ATTRIBUTES = (
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
    "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code", "major_occupation_code",
    "race", "hispanic_origin", "sex", "member_of_a_labor_union", "reason_for_unemployment",
    "full_or_part_time_employment_stat", "capital_gains", "capital_losses", "dividends_from_stocks",
    "tax_filer_stat", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year")
# Codes such as detailed_industry_recode and year are categories, not quantities: they stay strings.
COLUMNS = {**{name: ("float32" if name in CONTINUOUS else "string") for name in ATTRIBUTES},
           "income_50k": "float32", "never_married": "float32"}
_INCOME = {"- 50000.": 0.0, "50000+.": 1.0}


@dataclasses.dataclass
class CensusIncome:
    rows: dict
    bad_rows: list


def parse_census_row(text: str) -> dict:
    fields = [f.strip() for f in text.split(",")]
    if len(fields) == len(ATTRIBUTES) + 2:
        fields = fields[1:]  # DeepCTR's sample: a leading row index
    if len(fields) != len(ATTRIBUTES) + 1:
        raise RowError(f"expected {len(ATTRIBUTES) + 1} comma-separated fields, got {len(fields)}")
    if fields[-1] not in _INCOME:
        raise RowError(f"income label {fields[-1]!r} is not one of {sorted(_INCOME)}")
    row = {name: (to_float(value, name) if name in CONTINUOUS else value)
           for name, value in zip(ATTRIBUTES, fields)}
    row["income_50k"] = _INCOME[fields[-1]]
    row["never_married"] = float(row["marital_stat"] == "Never married")
    return row


def read_census_income(path: str) -> CensusIncome:
    """Reads one Census-Income (KDD) file (``.gz`` or plain)."""
    records, bad = parse_file(path, parse_census_row)
    return CensusIncome(to_columns(records, COLUMNS), bad)


def _files(directory: str) -> list:
    """The release's files present in ``directory``: census-income.data* (train), census-income.test* (test)."""
    files = [SourceFile(path, one_record(parse_census_row), split=split)
             for pattern, split in (("census-income.data*", "train"), ("census-income.test*", "test"))
             for path in sorted(glob.glob(os.path.join(directory, pattern)))]
    if not files:
        raise FileNotFoundError(f"{DATASET}: no census-income.data/.test files in {directory}; see data/{DATASET}.md")
    return files


SOURCE = Source(name=DATASET, columns=COLUMNS, files=_files)
