"""Writing a command's outputs without ever losing a user's file; the record of a run.

* Every file is written to a temporary sibling and renamed into place (:func:`atomic_path`,
  :func:`atomic_dir`, :func:`atomic_files`), so an interrupted run leaves no half-written
  output, and the next run removes the temporaries of writers that are gone.
* ``--overwrite`` replaces only a command's own earlier output, marked by :data:`OUTPUT_MARKER`,
  and never a file or folder that is, or contains, an input (:func:`check_output`); an output is
  never put inside a source (:func:`check_not_inside`).
* :func:`environment` is what every run records next to its outputs (versions, CPU kind).
* :func:`bar_disabled`: progress bars for a person at a terminal, one line per stage otherwise.

Split from :mod:`~wbc_nnabla.fileio`, which reads cells and images and writes NNC CSVs with these.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError, PathLike, SourceError



def bar_disabled(progress: bool) -> Optional[bool]:
    """tqdm's ``disable`` for a progress setting: off when asked, else None, which tqdm reads as
    "off without a terminal" (a log file or CI gets the stage's one-line messages, not a stream of
    carriage returns)."""
    return None if progress else True




def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    # the writer's pid in the name tells a stale temporary (its process is gone) from a live one
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> List[Path]:
    """Remove temporaries of ``path`` (``.NAME.<pid>.XXXX.tmp*``) left by processes that are gone.

    An interrupted write (kill -9, power loss) leaves its temporary sibling
    behind; the next write of the same output removes it. A temporary of a
    running process is kept. Returns the paths removed.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[^/]*\.tmp")
    for p in path.parent.iterdir():
        m = pattern.match(p.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder (and its parents); a file in the way is ``NotADirectoryError`` naming it.

    (``Path.mkdir`` reports a file in the way as "File exists", which reads as
    if the output itself existed.)
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), e.filename) from None


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success.

    The parent folder is created; on an exception the temporary file is removed
    and ``path`` is left as it was. Stale temporaries of ``path`` are removed first.
    """
    path = Path(path)
    _make_parent(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp" + path.suffix, dir=str(path.parent))
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------- renames that never replace

# renameat2(2) flags (linux/fs.h); AT_FDCWD: paths relative to the working folder
RENAME_NOREPLACE, RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100
_LIBC: list = []
#: Use Linux's renameat2 where it exists; False: the portable fallback of :func:`rename_noreplace`
#: and :func:`place` everywhere (tests; a file system that misreports the flags).
RENAMEAT2 = True


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2(src, dst, flags)``: True when done, False when this system has no such call.

    Python's ``os`` has no renameat2 (``os.rename`` replaces an existing file, or an empty
    folder, without a word); the one PyPI wrapper (``renameat2`` 0.4.4, 2022) is unmaintained
    and needs cffi. So glibc's function is called through ctypes. False: not Linux, glibc
    before 2.28, a kernel or file system without the flag (ENOSYS, EINVAL, ENOTSUP); other
    errors raise OSError naming both paths (EEXIST: ``dst`` exists).
    """
    if not _LIBC:
        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name, use_errno=True) if name and sys.platform.startswith("linux") else None
        _LIBC.append(getattr(lib, "renameat2", None))
    call = _LIBC[0]
    if call is None or not RENAMEAT2:
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise (FileExistsError if err == errno.EEXIST else OSError)(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: PathLike, dst: PathLike) -> None:
    """Rename ``src`` (a file or folder) to ``dst`` only if nothing is at ``dst``: never replaces.

    ``renameat2(RENAME_NOREPLACE)`` where the system has it (atomic). Elsewhere: a file is
    hard-linked (which fails if ``dst`` exists) and unlinked; a folder is renamed after a
    check, and ``os.rename`` then replaces at most an empty folder created in the
    microseconds between (nothing is lost; a non-empty one is refused). FileExistsError
    names ``dst`` when something is there.
    """
    src, dst = Path(src), Path(dst)
    if _renameat2(src, dst, RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    try:
        if src.is_dir() and not src.is_symlink():
            os.rename(src, dst)
        else:
            os.link(src, dst, follow_symlinks=False)
            os.unlink(src)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        raise


def identity(path: PathLike) -> Optional[Tuple[int, int]]:
    """``(device, inode)`` of what is at ``path`` (a symlink itself, not its target), None when nothing is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _replaceable(found: Path, expected: Optional[Tuple[int, int]], may_replace: Callable[[Path], bool]) -> bool:
    """Whether ``found`` is the very thing checked when the run began (``expected``) and may still be replaced."""
    return expected is not None and identity(found) == expected and may_replace(found)


def _taken(path: Path) -> FileExistsError:
    return FileExistsError(f"{path}: created or changed meanwhile (by another run, or by hand) while this run wrote "
                           f"its output; not replaced, and this run's output is discarded. Choose another output")


def place(tmp: PathLike, path: PathLike, expected: Optional[Tuple[int, int]],
          may_replace: Optional[Callable[[Path], bool]] = None) -> None:
    """Rename the finished ``tmp`` to ``path``, replacing only what was checked there and still may be.

    expected: :func:`identity` of ``path`` when the run checked it (None: nothing was there,
        so nothing may be replaced now). may_replace: asked, at this moment, of the thing at
        ``path`` (e.g. "empty, or carries this command's marker"); None: the expected thing may be.
    Under :func:`folder_lock` on the parent (cooperating runs take turns). Nothing there: a
    rename that never replaces (:func:`rename_noreplace`). Something there: swapped with
    ``tmp`` atomically (``RENAME_EXCHANGE``), then checked, and swapped back unless it is the
    ``expected`` thing and ``may_replace`` says yes; the old one is then removed. Without
    renameat2 the check comes just before the renames. FileExistsError (:func:`_taken`) names
    ``path`` when it may not be replaced; it is then left exactly as it was.
    """
    tmp, path = Path(tmp), Path(path)
    may_replace = may_replace or (lambda found: True)
    with folder_lock(path.parent):
        try:
            return rename_noreplace(tmp, path)
        except FileExistsError:
            if expected is None:
                raise _taken(path) from None
        if _renameat2(tmp, path, RENAME_EXCHANGE):          # path: ours now; tmp: what was there
            ok = False
            try:
                ok = _replaceable(tmp, expected, may_replace)
            finally:
                if not ok:
                    _renameat2(tmp, path, RENAME_EXCHANGE)  # put it back as it was
            if not ok:
                raise _taken(path)
            return _remove(tmp)
        if not _replaceable(path, expected, may_replace):
            raise _taken(path)
        aside = path.parent / f"{_tmp_prefix(path)}old.tmp"
        os.rename(path, aside)
        try:
            rename_noreplace(tmp, path)
        except BaseException:
            os.rename(aside, path)
            raise
        _remove(aside)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def _may_replace_dir(command: Optional[str]) -> Callable[[Path], bool]:
    """An output folder may be replaced when it is empty, or (with ``command``) carries that command's marker."""
    def check(found: Path) -> bool:
        if not found.is_dir() or found.is_symlink():
            return False
        return not any(found.iterdir()) or command is None or marker_command(found) == command
    return check


@contextlib.contextmanager
def atomic_dir(path: PathLike, overwrite: bool = False, command: Optional[str] = None,
               may_replace: Optional[Callable[[Path], bool]] = None) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``path``; rename it to ``path`` on success.

    An interrupted build leaves no half output under ``path`` (and its
    temporary is removed by the next run). When ``path`` exists it is replaced
    only if ``overwrite`` is true; callers check first that it may be
    (:func:`check_output`). With ``command`` the folder gets the marker
    :data:`OUTPUT_MARKER` naming it, which later lets that command replace it.

    The final rename (:func:`place`) never replaces a folder that was not there when this was
    entered (one a user or a concurrent run made meanwhile), nor one that changed identity,
    nor one that at that moment is neither empty nor ``may_replace``-able (default: empty, or
    carrying ``command``'s marker; without ``command`` the folder that was there). Such a
    folder is left as it is, this run's output discarded, and FileExistsError names it.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (choose another output or allow overwrite)")
    expected = identity(path)
    _make_parent(path)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=str(path.parent)))
    os.chmod(tmp, 0o777 & ~_umask())
    ours = identity(tmp)
    try:
        yield tmp
        if command:
            write_marker(tmp, command)
        place(tmp, path, expected, may_replace or _may_replace_dir(command))
    finally:
        if identity(tmp) == ours:      # never a folder swapped in by place() and not swapped back
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: PathLike, shared: bool = False) -> Iterator[None]:
    """Hold an ``fcntl.flock`` on ``folder`` (exclusive, or ``shared`` for readers) while inside.

    Writers of files that belong together (:func:`atomic_files`) take it
    exclusively around their renames; a reader that takes it shared sees
    either the old or the new set, never a mix. Advisory: only cooperating
    processes wait for it.
    """
    fd = os.open(str(folder), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def atomic_files(paths: Sequence[PathLike], overwrite: bool = False) -> Iterator[List[Path]]:
    """Yield a temporary sibling for each of ``paths`` (same folder); rename them all together on success.

    The renames happen while holding :func:`folder_lock` on the folder, so two
    runs writing the same set of files leave one run's complete set, never a
    mix. Without ``overwrite`` an output that exists at rename time (another
    run got there first) raises FileExistsError naming it and nothing is
    renamed. On an exception every temporary is removed and the outputs are
    left as they were.
    """
    paths = [Path(p) for p in paths]
    parent = paths[0].parent
    if any(p.parent != parent for p in paths):
        raise InputError(f"atomic_files: {', '.join(map(str, paths))} are not in one folder")
    _make_parent(paths[0])
    tmps: List[Path] = []
    try:
        for p in paths:
            remove_stale_temporaries(p)
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(p), suffix=".tmp" + p.suffix, dir=str(parent))
            os.close(fd)
            os.chmod(tmp, 0o666 & ~_umask())
            tmps.append(Path(tmp))
        yield list(tmps)
        with folder_lock(parent):
            taken = [p for p in paths if p.exists() or p.is_symlink()] if not overwrite else []
            if taken:
                raise FileExistsError(f"{taken[0]}: already exists (written meanwhile by another run?); "
                                      f"choose another output, or --overwrite")
            for tmp, p in zip(tmps, paths):
                os.replace(tmp, p)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


def output_of_temporary(path: PathLike) -> Path:
    """The output a temporary of :func:`atomic_path` / :func:`atomic_dir` stands for (``path`` itself otherwise).

    ``DIR/.NAME.<pid>.XXXX.tmp[.suffix]`` -> ``DIR/NAME``, in any part of the path
    (a file inside a temporary folder too): error messages name the file the
    user asked for, not its temporary.
    """
    parts = []
    for part in Path(path).parts:
        m = re.match(r"^\.(.+)\.\d+\.[^.]+\.tmp(\.[^.]*)?$", part)
        parts.append(m.group(1) if m else part)
    return Path(*parts)


#: File that marks a folder as written by a wbc-nnabla command: ``{"command": NAME}``.
OUTPUT_MARKER = ".wbc_nnabla_output.json"


def write_marker(folder: PathLike, command: str) -> None:
    """Mark ``folder`` as the output of ``command`` (what :func:`check_output` accepts to replace)."""
    write_text(Path(folder) / OUTPUT_MARKER, json.dumps({"command": command}) + "\n")


def marker_command(folder: PathLike) -> Optional[str]:
    """The command named by ``folder``'s marker, or None (no marker, or unreadable)."""
    try:
        return json.loads((Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def check_output(out: PathLike, command: str, overwrite: bool, inputs: Iterable[PathLike] = (),
                 folder: Optional[bool] = None) -> None:
    """Refuse an output that would lose a file this command did not write.

    * ``out`` missing: fine. Existing and not ``overwrite``: FileExistsError.
    * An existing file is replaced (with ``overwrite``) only when no input is it.
    * An existing folder is replaced only when it is empty or carries the marker
      of the same ``command`` (:data:`OUTPUT_MARKER`), and never when it is, or
      contains, any of ``inputs`` (the files and folders the run reads: input
      CSVs, models, every image a predictions CSV points to).
    * ``folder``: True when the output is a folder (an existing file there is
      refused), False when it is a file (an existing folder is refused), None: either.
    Raises FileExistsError (or :class:`SourceError` for an input inside) naming
    the path and what to do.
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out}: already exists (choose another output, or --overwrite to replace "
                              f"an earlier {command} output)")
    if folder is not None and out.is_dir() != folder:
        raise FileExistsError(f"{out}: not replaced: it is {'not ' if folder else ''}a folder, and "
                              f"`wbc-nnabla {command}` writes a {'folder' if folder else 'file'} there. "
                              f"Choose another output")
    out_r = out.resolve()
    for p in inputs:
        p_r = Path(p).resolve()
        if p_r == out_r or out_r in p_r.parents:
            raise SourceError(f"{out}: not replaced: it {'is' if p_r == out_r else 'contains'} the input {p}; "
                              f"choose another output (inputs are never deleted)")
    if out.is_dir() and any(out.iterdir()) and marker_command(out) != command:
        found = marker_command(out)
        raise FileExistsError(f"{out}: not replaced: it is not a `wbc-nnabla {command}` output "
                              f"({'it was written by ' + found if found else 'no ' + OUTPUT_MARKER + ' marker'}); "
                              f"--overwrite replaces only those. Choose another output")


def check_output_folder(out: PathLike, command: str, overwrite: bool, inputs: Iterable[PathLike] = ()) -> bool:
    """Check an output folder with :func:`check_output`; True when an existing one is to be replaced.

    An existing empty folder needs no ``overwrite``: nothing in it can be lost
    (``segment`` and ``gradcam`` have always accepted a folder made beforehand).
    Pass the result as ``overwrite`` of :func:`atomic_dir`.
    """
    out = Path(out)
    empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    check_output(out, command, overwrite or empty, inputs, folder=True)
    return out.exists() or out.is_symlink()


def write_text(path: PathLike, text: str) -> Path:
    """Write text atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def json_text(obj) -> str:
    """``obj`` as the indented JSON text :func:`write_json` writes (NumPy scalars and arrays, Paths converted)."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")
    return json.dumps(obj, indent=2, default=default, sort_keys=False) + "\n"


def write_json(path: PathLike, obj) -> Path:
    """Write JSON atomically, indented, with NumPy scalars converted."""
    return write_text(path, json_text(obj))


#: Vector instruction sets from the widest down; :func:`cpu_simd` reports the first the CPU has.
SIMD_LEVELS = ("avx512f", "avx2", "avx", "sse4_2", "sse2", "asimd", "neon")


def cpuinfo(path: PathLike = "/proc/cpuinfo") -> dict:
    """The fields of ``/proc/cpuinfo`` (Linux), lower-case keys, each key's first value; ``{}`` elsewhere.

    Read by hand: neither numpy nor the standard library gives the CPU's flags or model through a
    public function.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_simd(info: Optional[dict] = None) -> str:
    """The widest vector instruction set of this CPU (e.g. ``avx512f``, ``avx2``), or ``unknown``.

    Kept with every run because it changes results: the CPU kernels pick their code by it, and the
    float rounding differs, so the same seed on an AVX-512 and an AVX2 machine trains a slightly
    different model (docs/research/benchmarks_log.md). ``info``: :func:`cpuinfo`'s fields, read when not given.
    """
    info = cpuinfo() if info is None else info
    flags = set((info.get("flags") or info.get("features") or "").split())
    return next((level for level in SIMD_LEVELS if level in flags), "unknown")


def cpu_model(info: Optional[dict] = None) -> str:
    """This CPU's name, family and model number (e.g. ``AMD EPYC, family 25 model 17``), or ``unknown``.

    Kept with every run beside :func:`cpu_simd`: two machines with the same vector instruction set
    but different CPU models have trained different models from the same seed (docs/research/benchmarks_log.md).
    ``info``: :func:`cpuinfo`'s fields, read when not given.
    """
    info = cpuinfo() if info is None else info
    name = info.get("model name") or info.get("cpu model") or info.get("hardware")
    if not name:
        return "unknown"
    if "cpu family" in info and "model" in info:
        return f"{name}, family {info['cpu family']} model {info['model']}"
    return name


def environment() -> dict:
    """Versions of Python, the platform and the installed libraries a run depends on.

    Read from package metadata, so calling it imports none of them (scoring
    stays free of nnabla).
    """
    from importlib import metadata

    from . import __version__
    info = cpuinfo()
    out = {"wbc_nnabla": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
           "cpu_simd": cpu_simd(info), "cpu_model": cpu_model(info)}
    for dist in ("nnabla", "nnabla-ext-cuda116", "nnabla-ext-cuda120", "numpy", "opencv-python-headless",
                 "scipy", "pandas", "matplotlib", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # optional packages may be absent
            continue
    return out


def check_not_inside(out: PathLike, sources: Iterable[PathLike]) -> None:
    """Refuse an output folder inside (or equal to) a source folder: sources stay read-only.

    A source that is a file (a CSV listing cells) protects only itself; pass
    the folders of the images it lists to protect them too.
    """
    out_r = Path(out).resolve()
    for s in sources:
        s_r = Path(s).resolve()
        if s_r.is_file() or not s_r.exists():
            if out_r == s_r:
                raise SourceError(f"output {out} is the source file {s}; choose another output")
            continue
        if out_r == s_r or s_r in out_r.parents:
            raise SourceError(f"output {out} is inside the source folder {s_r}; "
                              f"choose an output outside it (sources are never written)")
