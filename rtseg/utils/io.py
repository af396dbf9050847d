"""Atomic file writes: a crash mid-write never leaves a truncated checkpoint or output."""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync and ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give what open() would
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # write(2) errors (ENOSPC, EROFS, EIO) carry no file name: name the file being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    # serialised in memory first: torch.save straight into a file that hits ENOSPC raises a RuntimeError
    # from its zip writer ("unexpected pos"), hiding the OSError that names the problem
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_open(path, "wb") as f:
        f.write(buf.getbuffer())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def replace_marked(text: str, start: str, end: str, body: str, where: str = "text") -> str:
    """``text`` with what lies between the markers ``start`` and ``end`` replaced by ``body`` (the generated
    sections of the README and docs); ``ValueError`` naming ``where`` when a marker is missing."""
    if start not in text or end not in text:
        raise ValueError(f"{where}: markers {start} / {end} not found")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


# ----------------------------------------------------------------------------------------------
# temporary names, writers that need a path, and outputs that must never land on inputs

#: every temporary file rtseg writes is ``.<final name>.<random>.tmp`` (``atomic_open``) or
#: ``.<final name>.<random>.tmp<suffix>`` (``atomic_path``, for writers that pick a format by suffix)
_TMP_RE = re.compile(r"^\.(?P<final>.+)\.[A-Za-z0-9_]{4,}\.tmp(\.[A-Za-z0-9]{1,8})?$")


def temp_target(name: str) -> str | None:
    """The final file name a temporary file of this naming convention stands for, else ``None``."""
    m = _TMP_RE.match(name)
    return m.group("final") if m else None


def remove_stale_temps(folder: str | os.PathLike, finals: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files a killed rtseg process left in ``folder`` (not recursive).

    Only names of rtseg's temp convention are touched; with ``finals`` only those standing for one of
    these final names (so a run cleans its own leftovers, not another process's). Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keep = None if finals is None else {str(n) for n in finals}
    removed = []
    for p in folder.iterdir():
        final = temp_target(p.name)
        if final is None or (keep is not None and final not in keep) or not p.is_file():
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that choose a container by suffix work: mp4,
    onnx, xml) for a writer that opens files itself; renamed onto ``path`` only when the block ends without
    an exception, removed otherwise. A kill leaves only a temp name, which :func:`remove_stale_temps` clears.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())
        yield tmp_path
        if not tmp_path.is_file():
            raise FileNotFoundError(f"{path}: the writer produced no file")
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_outputs_not_inputs(inputs: Iterable[str | os.PathLike], out: str | os.PathLike,
                             outputs: Iterable[str | os.PathLike] = (), what: str = "--out") -> None:
    """Refuse (``ValueError`` naming ``what`` and the file) when writing to ``out`` could replace an input.

    ``out`` must not be an input file, and none of ``outputs`` (the files that will be written) may be an
    input: compared by resolved path and, for files that exist, by device and inode (symlinks, hard links,
    ``..`` and case-insensitive file systems all count as the same file).
    """

    def ident(p: str | os.PathLike) -> tuple:
        try:
            st = os.stat(p)
            return ("inode", st.st_dev, st.st_ino)
        except OSError:
            return ("path", Path(p).expanduser().resolve())

    ins: dict[tuple, str] = {}
    for p in inputs:
        ins[ident(p)] = str(p)
        ins[("path", Path(p).expanduser().resolve())] = str(p)
    if not Path(out).is_dir() and (ident(out) in ins or ("path", Path(out).expanduser().resolve()) in ins):
        raise ValueError(f"{what} {out}: is one of the inputs; it would be overwritten (choose another {what})")
    for o in outputs:
        hit = ins.get(ident(o)) or ins.get(("path", Path(o).expanduser().resolve()))
        if hit is not None:
            raise ValueError(f"{what} {out}: output {o} would overwrite the input {hit}; choose another {what}")


def check_out_dir(inputs: Iterable[str | os.PathLike], out: str | os.PathLike, what: str = "--out") -> None:
    """Refuse an output folder that is an input file or that holds one of the input files directly (a predict
    into its own source folder replaced the input PNGs with label maps). ``ValueError`` naming both."""
    out_p = Path(out).expanduser()
    out_k = out_p.resolve()
    for p in inputs:
        src = Path(p).expanduser()
        if src.resolve() == out_k or (out_p.exists() and src.exists() and os.path.samefile(src, out_p)):
            raise ValueError(f"{what} {out}: is the input {p}; choose an output folder")
        if src.resolve().parent == out_k:
            raise ValueError(f"{what} {out}: holds the input {p}; outputs would replace or mix with the inputs "
                             f"(choose another {what}, e.g. {out_p / 'pred'})")
