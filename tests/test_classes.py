"""Class taxonomy: the paper's six classes (Table 1 order), the five-class view, synonyms."""
import pytest

from wbc_nnabla import classes
from wbc_nnabla.classes import CLASSES5, CLASSES6, LabelError


def test_table1_order_and_five_class_view():
    assert CLASSES6 == ("Basophil", "Eosinophil", "Lymph", "Mono", "Band", "Segment")
    assert CLASSES5 == ("Basophil", "Eosinophil", "Lymph", "Mono", "Neutrophil")
    assert [classes.index6(c) for c in CLASSES6] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("name", CLASSES6)
def test_every_class_parses_to_itself_in_any_case(name):
    assert classes.to_class6(name) == name
    assert classes.to_class6(name.upper()) == name
    assert classes.to_class6(name.lower()) == name


@pytest.mark.parametrize("spelling, six, five", [
    ("BNE", "Band", "Neutrophil"),
    ("band neutrophil", "Band", "Neutrophil"),
    ("Band_Neutrophil", "Band", "Neutrophil"),
    ("SNE", "Segment", "Neutrophil"),
    ("segmented", "Segment", "Neutrophil"),
    ("seg", "Segment", "Neutrophil"),
    ("lymphocyte", "Lymph", "Lymph"),
    ("LY", "Lymph", "Lymph"),
    ("monocyte", "Mono", "Mono"),
    ("MO", "Mono", "Mono"),
    ("eosinophil", "Eosinophil", "Eosinophil"),
    ("EO", "Eosinophil", "Eosinophil"),
    ("basophil", "Basophil", "Basophil"),
    ("BA", "Basophil", "Basophil"),
    ("  Lymphocyte ", "Lymph", "Lymph"),
])
def test_synonyms(spelling, six, five):
    assert classes.to_class6(spelling) == six
    assert classes.to_class5(spelling) == five


def test_subcategories_report_to_their_class():
    # The paper's discussion proposes splitting Lymph into small and large.
    assert classes.category("small lymphocyte").name == "Lymph small"
    assert classes.to_class6("Lymph large") == "Lymph"
    assert classes.to_class5("LLY") == "Lymph"


def test_neutrophil_without_subtype_is_five_class_only():
    assert classes.to_class5("Neutrophil") == "Neutrophil"
    with pytest.raises(LabelError, match="Band or Segment"):
        classes.to_class6("neutrophil", source="cells.csv:7")
    assert classes.to_class6("NEU", allow_neutrophil=True) is None


def test_unknown_label_names_label_source_and_valid_names():
    with pytest.raises(LabelError) as e:
        classes.to_class6("Blast", source="cells.csv:12")
    msg = str(e.value)
    assert "'Blast'" in msg and "cells.csv:12" in msg
    for name in CLASSES6:
        assert name in msg


def test_merge_to_five():
    assert classes.merge_to_five(list(CLASSES6) + [None]) == [
        "Basophil", "Eosinophil", "Lymph", "Mono", "Neutrophil", "Neutrophil", None]


def test_taxonomy_is_data_and_consistent():
    for cat in classes.TAXONOMY:
        assert cat.class6 is None or cat.class6 in CLASSES6
        assert cat.class5 in CLASSES5
        if cat.class6 is not None:
            assert classes.to_class5(cat.class6) == cat.class5
