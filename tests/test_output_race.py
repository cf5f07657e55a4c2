"""The atomic folder writer's final rename (issue 49, root cause 5): it never replaces a folder that
was not there when the run began, that changed since, or that is not empty or the command's own
at that moment; with Linux's renameat2 and with the portable fallback."""
import shutil
import threading

import pytest

from wbc_nnabla import outputs


@pytest.fixture(params=["renameat2", "fallback"])
def mode(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.setattr(outputs, "RENAMEAT2", False)
    return request.param


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_folder_a_user_makes_meanwhile_is_never_deleted(tmp_path, mode):
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match="created or changed meanwhile"):
        with outputs.atomic_dir(out, command="segment") as tmp:
            (tmp / "mask.png").write_bytes(b"x")
            out.mkdir()
            (out / "mine.txt").write_text("keep me")
    assert _listing(out) == ["mine.txt"] and _listing(tmp_path) == ["out"]


def test_an_empty_folder_made_meanwhile_is_not_taken_either(tmp_path, mode):
    """os.rename would replace it silently: the run's check said nothing was there."""
    out = tmp_path / "out"
    with pytest.raises(FileExistsError):
        with outputs.atomic_dir(out, overwrite=True, command="segment"):
            out.mkdir()
    assert _listing(out) == [] and _listing(tmp_path) == ["out"]


def test_two_concurrent_runs_into_one_new_folder_one_fails(tmp_path, mode):
    out, started, results = tmp_path / "out", threading.Barrier(2), []

    def run(name):
        try:
            with outputs.atomic_dir(out, overwrite=True, command="score") as tmp:
                (tmp / name).write_text(name)
                started.wait()
            results.append(name)
        except FileExistsError:
            results.append("refused")

    threads = [threading.Thread(target=run, args=(n,)) for n in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("refused") == 1 and len(results) == 2, results
    winner = next(r for r in results if r != "refused")
    assert _listing(out) == sorted([outputs.OUTPUT_MARKER, winner]) and _listing(tmp_path) == ["out"]


def test_overwrite_replaces_its_own_output_and_nothing_that_took_its_place(tmp_path, mode):
    out = tmp_path / "out"
    with outputs.atomic_dir(out, command="segment") as tmp:
        (tmp / "old.png").write_bytes(b"1")
    with outputs.atomic_dir(out, overwrite=True, command="segment") as tmp:
        (tmp / "new.png").write_bytes(b"2")
    assert _listing(out) == [outputs.OUTPUT_MARKER, "new.png"]
    with pytest.raises(FileExistsError, match="created or changed meanwhile"):
        with outputs.atomic_dir(out, overwrite=True, command="segment") as tmp:
            shutil.rmtree(out)                 # the user swaps the output for a folder of theirs
            out.mkdir()
            (out / "mine.txt").write_text("keep me")
    assert _listing(out) == ["mine.txt"] and _listing(tmp_path) == ["out"]
    with pytest.raises(FileExistsError):
        with outputs.atomic_dir(out, overwrite=True, command="segment"):
            pass                                # same folder, but not empty and not a segment output
    assert _listing(out) == ["mine.txt"]


def test_a_file_added_to_the_output_meanwhile_is_replaced_only_with_a_marked_output(tmp_path, mode):
    """A marked output is the command's to replace (what --overwrite means); an unmarked one that
    gained a file since the run began is not."""
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileExistsError):
        with outputs.atomic_dir(out, overwrite=True, command="gradcam"):
            (out / "mine.txt").write_text("keep me")          # was empty when checked, is not now
    assert _listing(out) == ["mine.txt"]


def test_rename_noreplace_never_replaces_a_file(tmp_path, mode):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("new")
    b.write_text("theirs")
    with pytest.raises(FileExistsError):
        outputs.rename_noreplace(a, b)
    assert a.read_text() == "new" and b.read_text() == "theirs"
    b.unlink()
    outputs.rename_noreplace(a, b)
    assert b.read_text() == "new" and not a.exists()
