"""The one base class of the errors wbc_nnabla raises for bad input (nnabla-free, imports nothing).

Every error the library raises on purpose (an unreadable image, a bad cell
source, an unknown label, a model file of another kind, a training setting
out of range, a malformed predictions CSV) is a :class:`WBCError`, and keeps
its standard base too (``ValueError`` or ``OSError``), so ``except WBCError``
catches them all and older ``except ValueError`` code still works. The
command line turns each into one line naming the file, row or flag.

Also the package's one path type, :data:`PathLike`.
"""
import os
from typing import Union

#: Anything the package accepts as a file or folder path.
PathLike = Union[str, os.PathLike]


class WBCError(Exception):
    """Base of every wbc_nnabla input error; its message names what was wrong and where."""


class InputError(WBCError, ValueError):
    """An argument or setting out of its documented range (a size, a fraction, a choice)."""


class SourceError(WBCError, ValueError):
    """A cell source (folder or CSV) that does not have the expected shape, or an output that
    would overwrite or sit inside one."""
