"""``python -m wbc_nnabla.cli``: the ``wbc-nnabla`` command."""
import sys

from . import main

sys.exit(main())
