"""The leukocyte classes of Sasaki et al. (2020) and their spellings.

Six reporting classes in the order of the paper's Table 1 (class indices 0-5)::

    Basophil, Eosinophil, Lymph, Mono, Band, Segment

and the five-class view of Table 1 A1/B1, where Band and Segment neutrophils
are merged into ``Neutrophil``.

The taxonomy is data (:data:`TAXONOMY`): every accepted name maps to a
*category* (possibly a sub-category such as ``Lymph small``, which the paper's
discussion proposes), every category maps up to a six-class reporting class
(or to none, for ``Neutrophil`` without subtype) and to a five-class one.
Add a synonym or a sub-category by adding a row, not an ``if``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from .errors import WBCError

CLASSES6: Tuple[str, ...] = ("Basophil", "Eosinophil", "Lymph", "Mono", "Band", "Segment")
CLASSES5: Tuple[str, ...] = ("Basophil", "Eosinophil", "Lymph", "Mono", "Neutrophil")
NEUTROPHIL = "Neutrophil"
#: Classes of a WBC differential (per-smear percentages): the six of Table 1 and
#: ``Neutrophil`` (= Band + Segment), the class of the five-class view they merge into.
DIFF_CLASSES: Tuple[str, ...] = CLASSES6 + (NEUTROPHIL,)
#: Six-class index of each class name (Table 1 order).
INDEX6: Dict[str, int] = {c: i for i, c in enumerate(CLASSES6)}
INDEX5: Dict[str, int] = {c: i for i, c in enumerate(CLASSES5)}


@dataclass(frozen=True)
class Category:
    """One row of the taxonomy.

    name: canonical category name (a reporting class or a sub-category).
    class6: six-class reporting class, or None when the label has no subtype
        (``Neutrophil``): such cells count in the five-class figures only.
    class5: five-class reporting class.
    synonyms: accepted spellings, compared case- and separator-insensitively.
    """

    name: str
    class6: Optional[str]
    class5: str
    synonyms: Tuple[str, ...] = ()


TAXONOMY: Tuple[Category, ...] = (
    Category("Basophil", "Basophil", "Basophil", ("BA", "BASO", "basophils")),
    Category("Eosinophil", "Eosinophil", "Eosinophil", ("EO", "EOS", "eosino", "eosinophils")),
    Category("Lymph", "Lymph", "Lymph", ("LY", "LYM", "lymphocyte", "lymphocytes", "lympho")),
    Category("Lymph small", "Lymph", "Lymph", ("small lymphocyte", "SLY", "small lymph")),
    Category("Lymph large", "Lymph", "Lymph", ("large lymphocyte", "LLY", "large lymph", "LGL")),
    Category("Mono", "Mono", "Mono", ("MO", "MON", "monocyte", "monocytes")),
    Category("Band", "Band", "Neutrophil",
             ("BNE", "band neutrophil", "band neutrophils", "band cell", "stab", "stab neutrophil",
              "band form")),
    Category("Segment", "Segment", "Neutrophil",
             ("SNE", "segmented", "segmented neutrophil", "segmented neutrophils", "seg",
              "segs", "segmented cell", "neutrophil segmented", "polymorphonuclear")),
    Category("Neutrophil", None, "Neutrophil", ("NE", "NEU", "neutrophils", "PMN")),
)


def _key(text: str) -> str:
    """Normalise a spelling: case-folded, separators (space _ - .) collapsed."""
    return re.sub(r"[\s_\-.]+", " ", str(text)).strip().casefold()


_BY_KEY: Dict[str, Category] = {}
for _cat in TAXONOMY:
    for _s in (_cat.name,) + _cat.synonyms:
        assert _key(_s) not in _BY_KEY, f"duplicate spelling in TAXONOMY: {_s!r}"
        _BY_KEY[_key(_s)] = _cat


class LabelError(WBCError, ValueError):
    """An unknown or, in the six-class view, under-specified label."""


def _where(source: Optional[str]) -> str:
    return f" in {source}" if source else ""


def category(label: str, source: Optional[str] = None) -> Category:
    """The taxonomy row for ``label`` (any accepted spelling).

    source: where the label came from (file and row), used in the error message.
    Raises :class:`LabelError` naming the label, its source and the valid names.
    """
    cat = _BY_KEY.get(_key(label))
    if cat is None:
        valid = ", ".join(c.name for c in TAXONOMY)
        raise LabelError(
            f"unknown label {label!r}{_where(source)}; valid names are {valid} "
            f"(case-insensitive; synonyms such as BNE, SNE, seg, lymphocyte, LY, monocyte)"
        )
    return cat


def to_class6(label: str, source: Optional[str] = None, allow_neutrophil: bool = False) -> Optional[str]:
    """Six-class reporting class of ``label``.

    ``Neutrophil`` without subtype is valid in the five-class view only: it
    raises :class:`LabelError` unless ``allow_neutrophil`` is true, in which
    case it returns None (the cell counts in five-class figures only).
    """
    cat = category(label, source)
    if cat.class6 is None and not allow_neutrophil:
        raise LabelError(
            f"label {label!r}{_where(source)} has no neutrophil subtype; the six-class view "
            f"needs Band or Segment (valid six-class names: {', '.join(CLASSES6)})"
        )
    return cat.class6


def to_class5(label: str, source: Optional[str] = None) -> str:
    """Five-class reporting class of ``label`` (Band and Segment -> Neutrophil)."""
    return category(label, source).class5


def index6(label: str, source: Optional[str] = None) -> int:
    """Six-class index (0-5, Table 1 order) of ``label``."""
    return INDEX6[to_class6(label, source)]


def merge_to_five(classes6: Sequence[str]) -> list:
    """Map six-class names (or None) to the five-class view, elementwise."""
    return [None if c is None else to_class5(c) for c in classes6]
