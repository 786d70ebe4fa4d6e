"""The ``--where`` parser: grammar, three-valued evaluation, clear errors, never eval."""

from __future__ import annotations

import builtins

import pytest

from apflow.engine import WhereError, parse_where


@pytest.mark.parametrize(
    ("text", "data_id", "expected"),
    [
        ("visit in (1, 2) and detector < 5", {"visit": 2, "detector": 4}, True),
        ("visit in (1, 2) and detector < 5", {"visit": 3, "detector": 4}, False),
        ("visit in (1,2) and detector<5", {"visit": 1, "detector": 5}, False),
        ("band = 'r'", {"band": "r"}, True),
        ('band == "g"', {"band": "r"}, False),
        ("visit != 3", {"visit": 3}, False),
        ("visit >= 3 or detector <= 0", {"visit": 1, "detector": 0}, True),
        ("not visit > 2", {"visit": 2}, True),
        ("visit not in (1, 2)", {"visit": 3}, True),
        ("NOT (visit = 1 OR visit = 2)", {"visit": 1}, False),
        ("detector > -1", {"detector": 0}, True),
        ("visit = 1 or visit = 2 and detector = 9", {"visit": 1, "detector": 0}, True),
        ("(visit = 1 or visit = 2) and detector = 9", {"visit": 1, "detector": 0}, False),
    ],
)
def test_expression_selects_data_ids(text, data_id, expected):
    assert parse_where(text)(data_id) is expected


def test_missing_key_neither_selects_nor_rejects():
    where = parse_where("visit = 1 and detector < 5")
    assert where.evaluate({"visit": 1}) is None
    assert where({"visit": 1}) is True
    assert where({"visit": 2}) is False  # definitely false whatever the detector


def test_negated_missing_key_stays_undecided():
    assert parse_where("not detector < 5")({"visit": 1}) is True


def test_string_never_equals_integer():
    assert parse_where("visit = '1'")({"visit": 1}) is False
    assert parse_where("visit < 'a'")({"visit": 1}) is False


def test_keys_lists_every_named_key():
    assert parse_where("visit in (1) and (band = 'r' or not detector > 2)").keys == {
        "visit",
        "band",
        "detector",
    }


@pytest.mark.parametrize("text", [None, "", "   "])
def test_blank_expression_selects_everything(text):
    assert parse_where(text) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("visit =", "expected a number or a quoted string, found end of expression"),
        ("visit = 1 and", "expected a data-id key"),
        ("visit in 1, 2", "expected '('"),
        ("visit in (1, 2", "expected ')'"),
        ("(visit = 1", "expected ')'"),
        ("visit = 1 visit = 2", "expected 'and', 'or' or end of expression"),
        ("visit ~ 1", "unexpected character '~'"),
        ("band = r", "expected a number or a quoted string, found 'r'"),
        ("visit not = 1", "expected 'in' after 'not'"),
        ("1 = visit", "expected a data-id key"),
        ("visit = 'unclosed", "unexpected character"),
    ],
)
def test_invalid_expression_names_the_problem_and_column(text, message):
    with pytest.raises(WhereError, match="invalid --where expression") as info:
        parse_where(text)
    assert message in str(info.value)
    assert "column" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "visit = __import__('os')",
        "visit.__class__ = 1",
        "visit = 1; import os",
        "[x for x in ()]",
        "visit = 1 + 1",
    ],
)
def test_python_code_is_rejected_not_evaluated(text, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the parser must never evaluate Python")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    with pytest.raises(WhereError):
        parse_where(text)


def test_unknown_key_is_reported_with_the_known_ones():
    with pytest.raises(WhereError, match="unknown data-id key.*tract.*keys are: detector, visit"):
        parse_where("tract = 1").check_keys({"visit", "detector"})
