"""A lab's review: confirm each smear's cells in a browser page, sign its differential, and turn the
corrections into labels (issue 47; ``docs/review.md``).

Modules: :mod:`~wbc_nnabla.review.db` (the SQLite review database, its one owner),
:mod:`~wbc_nnabla.review.load` (predictions CSV -> database, checked), :mod:`~wbc_nnabla.review.server`
(the Flask app; the page is ``templates/`` and ``static/``), :mod:`~wbc_nnabla.review.labels` (live
differential, export as a cell source, AI-vs-reviewer agreement), :mod:`~wbc_nnabla.review.order`
(which cells to label first), :mod:`~wbc_nnabla.review.commands` (the command-line functions).
None of them imports nnabla.
"""
