"""Output folders and the persistence of an evaluation run.

**Writing** (every file minnorm writes goes through here):

- :func:`atomic_write` is the one atomic write: a temporary file beside the target, flushed,
  fsync'ed and renamed into place, so a reader (or a crash) never sees half a file. It refuses
  to write through a symbolic link: the temporary file is created with ``O_NOFOLLOW | O_EXCL``
  and a target that is a link is refused (a rename would replace the link, never its target).
- :func:`write_json` is the one JSON writer: strict JSON (RFC 8259; no ``NaN``/``Infinity``
  tokens) after :func:`json_safe`, which writes NaN as ``null`` and +-infinity as the strings
  ``"inf"``/``"-inf"``.
- :class:`OutputFolder` is an output folder (``--out``): its paths are opened component by
  component without following symbolic links, a lock file keeps a second process out, and a
  manifest (``.minnorm-files.json``) lists the files written there with their SHA-256, so that
  ``--overwrite`` removes only those. :func:`check_out_dir` is the pre-flight check a command
  runs before any attack.

**An evaluation run** (:class:`RunStore`)::

    run.json                  settings, environments that worked on it, status
    batches/batch-000007.json per-sample results of global batch 7 (the commit marker)
    batches/batch-000007.pt   its clean inputs and adversarials (optional, for the figures)

A run killed at any point resumes by redoing only the batches whose JSON file is missing (or
damaged), and no sample is ever counted twice because a batch's file name is its global index.
The JSON is written after the tensors, so its presence means both are complete. Each batch
JSON carries its own SHA-256 (of its canonical JSON) and that of its tensors, so a truncated or
edited batch is found, named and recomputed on resume.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import io
import json
import math
import os
import platform
import re
import secrets
import shutil
import socket
import stat
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

MANIFEST = "run.json"
BATCHES = "batches"
LOCK_FILE = ".minnorm.lock"
FILES = ".minnorm-files.json"
STAGING_PREFIX = ".minnorm-staging-"
# Settings that only shape the reports; a resume may change them.
REPORT_ONLY = ("grid", "examples", "sanity_margin")
RUN_FORMAT = 2  # 2: batch files carry SHA-256 checksums
_BATCH_NAME = re.compile(r"batch-(\d{6})\.(json|pt)")
_REPORT_FILES = ("results.json", "samples.csv", "summary.csv", "summary.md", "report.html",
                 "plots/robust_accuracy.png", "plots/norm_histograms.png", "plots/examples.png")


class UnsafeOutput(ValueError):
    """An output path that cannot be written safely (a symbolic link, a file where a folder
    should be, a folder in use by another process)."""


# --------------------------------------------------------------------------- JSON

def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold, as it will read back.

    NaN becomes ``null`` (no value) and +-infinity the strings ``"inf"`` / ``"-inf"`` (a value:
    e.g. ``eps=inf``); tuples become lists; numpy scalars and arrays, tensors and paths become
    plain values; anything else its ``repr()``.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):
        return json_safe(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return repr(obj)


jsonable = json_safe  # settings as they read back from disk (what a resume compares against)


def json_text(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj`` (after :func:`json_safe`), newline-terminated when indented."""
    text = json.dumps(json_safe(obj), indent=indent, allow_nan=False)
    return text + "\n" if indent is not None else text


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not strict JSON")


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """Parse a strict JSON file; a damaged one raises ``ValueError`` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}{' (' + what + ')' if what else ''} is damaged: {err}") from None


# --------------------------------------------------------------------------- the one atomic write

Payload = bytes | str | Callable[[BinaryIO], None]


def _as_writer(data: Payload) -> Callable[[BinaryIO], None]:
    if isinstance(data, str):
        data = data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return lambda f, b=data: f.write(b)
    return data


def _refuse_link(dir_fd: int, name: str, shown: str) -> None:
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise UnsafeOutput(f"{shown} is a symbolic link; refusing to write through it (remove the link "
                           "or choose another output folder)")
    if stat.S_ISDIR(mode):
        raise UnsafeOutput(f"{shown} is a folder where a file is to be written")


def _fsync_fd(fd: int) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be synced
        os.fsync(fd)


def _write_at(dir_fd: int, name: str, data: Payload, shown: str) -> None:
    """Atomically write ``name`` inside the open folder ``dir_fd``, never through a link."""
    _refuse_link(dir_fd, name, shown)
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            _as_writer(data)(f)
            f.flush()
            os.fsync(f.fileno())
        _refuse_link(dir_fd, name, shown)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # replaces a link, never its target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    _fsync_fd(dir_fd)


def atomic_write(path: str | os.PathLike, data: Payload) -> Path:
    """Write ``data`` (bytes, text, or a function writing to a binary file) to ``path``
    atomically: all of it or, after a crash, the old file. A ``path`` that is a symbolic link
    is refused (``UnsafeOutput``). The folder must exist."""
    path = Path(path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _write_at(dir_fd, path.name, data, str(path))
    finally:
        os.close(dir_fd)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """The one JSON writer: strict JSON (see :func:`json_safe`), atomically."""
    return atomic_write(path, json_text(obj))


def torch_bytes(obj: Any) -> bytes:
    """What ``torch.save(obj)`` writes, as bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- reading tensor files

def _torch_refusal(err: Exception) -> str:
    """The useful part of torch.load's (long, multi-line) refusal."""
    text = str(err)
    found = re.search(r"unsupported GLOBAL ([\w.]+)", text)
    if found:
        return f"it names the Python object {found.group(1)}, which a tensor file never needs (possibly malicious)"
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    useful = [s for s in lines if "nsupported" in s] or [s for s in lines if not s.startswith(
        ("Weights only load failed", "Check the documentation", "Please file an issue"))] or lines[:1]
    return useful[0] if useful else type(err).__name__


def existing_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is a file; a folder is a ValueError, a missing path a FileNotFoundError,
    each naming ``what`` (the option that gave it)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    return path


def read_tensor_file(path: str | os.PathLike, what: str = "file") -> Any:
    """Load a ``.safetensors`` file or a ``torch.save`` file without unpickling arbitrary objects
    (``weights_only=True``). Anything unreadable raises ``ValueError`` naming the file."""
    path = existing_file(path, what)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 (SafetensorError and friends: a damaged file)
            raise ValueError(f"{what} {path} is not a valid safetensors file ({err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 (the restricted unpickler refuses with several types)
        raise ValueError(f"{what} {path} cannot be loaded as plain tensors (torch.load with weights_only=True): "
                         f"{_torch_refusal(err)}") from None


# --------------------------------------------------------------------------- output folders

def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _links_inside(folder: Path) -> list[Path]:
    links = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        links += [Path(root, n) for n in dirs + files if os.path.islink(os.path.join(root, n))]
    return sorted(links)


def check_out_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Pre-flight check of an output folder, to run before any attack does.

    Refuses (``UnsafeOutput``, a ``ValueError``) a path that is a file or a symbolic link, a
    folder holding symbolic links (minnorm never writes through one), and a folder that is not
    writable, or, when it does not exist yet, whose nearest existing parent is not a writable
    folder. Creates nothing.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeOutput(f"{what} {path} is a symbolic link (to {os.readlink(path)}); give the folder itself")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeOutput(f"{what} {path} exists and is not a folder; choose a folder name")
        if not _writable(path):
            raise UnsafeOutput(f"{what} {path} is not writable")
        links = _links_inside(path)
        if links:
            raise UnsafeOutput(f"{what} {path} holds a symbolic link ({links[0]}); minnorm never writes through "
                               "links: remove it or choose another folder")
        return path
    parent = path.parent
    while True:
        try:
            st = os.stat(parent)
            break
        except (FileNotFoundError, NotADirectoryError):
            parent = parent.parent
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeOutput(f"cannot create {what} {path}: {parent} is not a folder")
    if not _writable(parent):
        raise UnsafeOutput(f"cannot create {what} {path}: {parent} is not writable")
    return path


def check_out_file(path: str | os.PathLike, what: str) -> Path:
    """Pre-flight check of an output file (``--export``, ``--json``): refuses a path that is a
    folder or a symbolic link, or whose folder is not (and cannot be made) writable."""
    path = Path(path)
    if os.path.islink(path):
        raise UnsafeOutput(f"{what} {path} is a symbolic link; refusing to write through it")
    if path.is_dir():
        raise UnsafeOutput(f"{what} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        check_out_dir(path.parent, f"the folder of {what}")
    elif not _writable(path.parent):
        raise UnsafeOutput(f"{what} {path}: {path.parent} is not writable")
    return path


def _split(rel: str) -> tuple[list[str], str]:
    parts = [p for p in str(rel).replace(os.sep, "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or os.path.isabs(rel):
        raise ValueError(f"not a path inside the output folder: {rel!r}")
    return parts[:-1], parts[-1]


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HELD: dict[tuple[int, int], list[int]] = {}  # (device, inode) of a locked folder -> [lock fd, holders]


class OutputFolder:
    """An output folder whose files are written atomically and never through a symbolic link.

    Every path below it is opened component by component with ``O_NOFOLLOW``, so a link
    planted in the folder (``samples.csv -> ~/.bashrc``, ``plots -> /etc``) is refused, not
    followed. :meth:`lock` keeps a second process out (``.minnorm.lock``); each file written is
    recorded with its SHA-256 in ``.minnorm-files.json`` (by the process holding the lock), and
    :meth:`clear_own_files` removes exactly those files.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._key: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"OutputFolder({str(self.path)!r})"

    # -- paths
    def _unsafe(self, err: OSError, shown: Path) -> Exception:
        if err.errno == errno.ELOOP or (err.errno == errno.ENOTDIR and os.path.islink(shown)):
            return UnsafeOutput(f"{shown} is a symbolic link; refusing to write through it (remove the link or "
                                "choose another output folder)")
        if err.errno == errno.ENOTDIR:
            return UnsafeOutput(f"{shown} is not a folder")
        return err

    def _open_dir(self, parts: list[str] | tuple[str, ...] = (), create: bool = False) -> int:
        """A file descriptor of the folder ``path/parts...``, no component a symbolic link."""
        if create and not os.path.lexists(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, _DIR_FLAGS)
        except OSError as err:
            raise self._unsafe(err, self.path) from None
        shown = self.path
        for part in parts:
            shown = shown / part
            try:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                os.close(fd)
                raise self._unsafe(err, shown) from None
            os.close(fd)
            fd = sub
        return fd

    def create(self) -> "OutputFolder":
        os.close(self._open_dir(create=True))
        return self

    # -- writing
    def write_bytes(self, rel: str, data: bytes) -> Path:
        """Write ``path/rel`` atomically (folders created as needed); recorded in the manifest."""
        parts, name = _split(rel)
        fd = self._open_dir(parts, create=True)
        try:
            _write_at(fd, name, data, str(self.path / rel))
        finally:
            os.close(fd)
        self._record({"/".join(parts + [name]): sha256(data)})
        return self.path / rel

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj: Any) -> Path:
        """Strict JSON (see :func:`json_safe`)."""
        return self.write_bytes(rel, json_text(obj).encode())

    def read_bytes(self, rel: str) -> bytes | None:
        """Contents of ``path/rel`` (``None`` if missing), refusing symbolic links."""
        parts, name = _split(rel)
        try:
            fd = self._open_dir(parts)
        except (FileNotFoundError, UnsafeOutput):
            return None
        try:
            f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ELOOP, errno.EISDIR):
                return None
            raise
        finally:
            os.close(fd)
        with os.fdopen(f, "rb") as fh:
            return fh.read()

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh private folder inside this one to write a set of files into; :meth:`commit`
        then moves them into place only once every one of them was written. Removed on exit."""
        fd = self._open_dir(create=True)
        name = f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        finally:
            os.close(fd)
        stage = self.path / name
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def commit(self, stage: Path) -> list[Path]:
        """Move every file written in ``stage`` to the same relative place in this folder."""
        rels = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file() and not p.is_symlink())
        digests = {rel: sha256((stage / rel).read_bytes()) for rel in rels}
        for rel in rels:  # every destination is checked before any file moves
            parts, name = _split(rel)
            fd = self._open_dir(parts, create=True)
            try:
                _refuse_link(fd, name, str(self.path / rel))
            finally:
                os.close(fd)
        for rel in rels:
            parts, name = _split(rel)
            fd = self._open_dir(parts, create=True)
            try:
                _refuse_link(fd, name, str(self.path / rel))
                os.replace(stage / rel, name, dst_dir_fd=fd)
                _fsync_fd(fd)
            finally:
                os.close(fd)
        self._record(digests)
        return [self.path / rel for rel in rels]

    # -- the manifest of files written here
    def files(self) -> dict[str, str]:
        """Files written here while this folder was locked: relative path -> SHA-256."""
        data = self.read_bytes(FILES)
        if not data:
            return {}
        try:
            files = json.loads(data).get("files", {})
        except (ValueError, AttributeError):
            return {}
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}

    def _record(self, entries: dict[str, str]) -> None:
        if entries:
            self._update_files(lambda files: {**files, **entries})

    def _update_files(self, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
        """Rewrite the manifest under the folder's lock: held by this process already, or taken
        for the moment. When another process holds it (rank 0 of a ``torchrun`` run), that
        process keeps the manifest and this one leaves it alone."""
        if self._key is None and self._folder_key() not in _HELD:
            try:
                self.lock()
            except UnsafeOutput:
                return
            try:
                self._write_files(change(self.files()))
            finally:
                self.unlock()
            return
        self._write_files(change(self.files()))

    def _folder_key(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _write_files(self, files: dict[str, str]) -> None:
        fd = self._open_dir(create=True)
        try:
            _write_at(fd, FILES, json_text({"format": 1, "files": dict(sorted(files.items()))}), str(self.path / FILES))
        finally:
            os.close(fd)

    def remove(self, rels: list[str] | tuple[str, ...]) -> list[str]:
        """Remove these paths (a symbolic link itself, never its target; folders are skipped)
        and drop them from the manifest. Returns what was removed."""
        removed = []
        for rel in sorted(set(rels)):
            parts, name = _split(rel)
            try:
                fd = self._open_dir(parts)
            except (FileNotFoundError, UnsafeOutput):
                continue
            try:
                if not stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                    os.unlink(name, dir_fd=fd)
                    removed.append(rel)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        if any(r in self.files() for r in rels):
            self._update_files(lambda files: {k: v for k, v in files.items() if k not in set(rels)})
        return removed

    def clear_own_files(self, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
        """Remove the files the manifest lists and ``extra`` (paths this kind of run writes),
        then the folders that leaves empty; anything else in the folder stays. A symbolic link at
        one of these paths is removed itself, its target never touched. Returns what was removed."""
        names = sorted(set(self.files()) | set(extra))
        removed = self.remove(names)
        for folder in sorted({"/".join(_split(r)[0]) for r in names if _split(r)[0]}, key=len, reverse=True):
            *up, last = folder.split("/")
            with contextlib.suppress(OSError):
                fd = self._open_dir(up)
                try:
                    os.rmdir(last, dir_fd=fd)  # only if empty
                finally:
                    os.close(fd)
        self._remove_staging()
        if self.files():
            self._update_files(lambda files: {})
        return removed

    def _remove_staging(self) -> None:
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path):
                if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)

    def foreign_entries(self) -> list[str]:
        """Names in the folder that are not minnorm's bookkeeping (lock, manifest, leftovers)."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n not in (LOCK_FILE, FILES) and not n.startswith(STAGING_PREFIX)
                      and not re.fullmatch(r"\..+\.\d+\.[0-9a-f]{8}\.tmp", n))

    # -- the lock
    def lock(self) -> "OutputFolder":
        """Take the folder's lock (created if needed; also a context manager). A second process
        asking for it gets ``UnsafeOutput`` naming the holder; this process may take it again.
        The operating system releases it when the process ends, however it ends."""
        if self._key is not None:
            return self
        fd = self._open_dir(create=True)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key not in _HELD:
                _HELD[key] = [self._acquire(fd), 0]
            _HELD[key][1] += 1
            self._key = key
        finally:
            os.close(fd)
        return self

    def _acquire(self, dir_fd: int) -> int:
        try:
            fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        except OSError as err:
            raise self._unsafe(err, self.path / LOCK_FILE) from None
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UnsafeOutput(f"{self.path} is in use by another minnorm process ({holder}); wait for it to "
                               "finish or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return fd

    def unlock(self) -> None:
        key, self._key = self._key, None
        if key is None or key not in _HELD:
            return
        _HELD[key][1] -= 1
        if _HELD[key][1] <= 0:
            os.close(_HELD.pop(key)[0])

    @property
    def locked(self) -> bool:
        return self._key is not None

    def __enter__(self) -> "OutputFolder":
        return self.lock()

    def __exit__(self, *exc: Any) -> None:
        self.unlock()


# --------------------------------------------------------------------------- fingerprints and environment

def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """Hash of the model's class, parameters and buffers: a resume must attack the same weights."""
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name in sorted(state):
        h.update(name.encode())
        h.update(tensor_fingerprint(state[name]).encode())
    return h.hexdigest()[:16]


def environment() -> dict[str, Any]:
    """Package versions and machine, recorded with the results."""
    from .. import __version__

    env = {"minnorm": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(), "hostname": socket.gethostname(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cuda": torch.version.cuda if torch.cuda.is_available() else None,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        import matplotlib
        env["matplotlib"] = matplotlib.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    return env


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in REPORT_ONLY}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and old != new:
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            name = a.get("name", i) if isinstance(a, dict) and isinstance(b, dict) and a.get("name") == b.get("name") else i
            out += _differences(a, b, f"{prefix}{name}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: saved {old!r}, now {new!r}"]
    return []


# --------------------------------------------------------------------------- batches

class DamagedBatch(ValueError):
    """A saved batch whose files are unreadable or do not match their checksums."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = path, why
        super().__init__(f"{path} is damaged ({why}). Run the same `minnorm evaluate` command with the same --out "
                         "again: it recomputes damaged batches and keeps the others")


def record_digest(record: dict[str, Any]) -> str:
    """SHA-256 of a batch record's canonical JSON, its own ``sha256`` field left out."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())


def _batch_name(index: int, suffix: str) -> str:
    return f"{BATCHES}/batch-{index:06d}.{suffix}"


class RunStore:
    """A run folder on disk (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.batches = self.folder / BATCHES
        self.out = OutputFolder(self.folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        manifest = read_json(self.manifest_path, "the run's settings")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
            raise ValueError(f"{self.manifest_path} is damaged (no settings in it); choose another output folder "
                             "or pass --overwrite to start afresh")
        return manifest

    def open(self, config: dict[str, Any], *, overwrite: bool = False) -> set[int]:
        """Start or resume a run; returns the intact batches already done.

        A finished run is refused unless ``overwrite``; an unfinished one resumes only with the
        same settings (a ValueError lists what differs). A finished run some of whose batches
        are damaged or missing resumes too: those batches are recomputed. The folder stays
        locked against other processes until :meth:`finish` (or the process ends).
        """
        config = jsonable(config)  # as it will read back from disk
        check_out_dir(self.folder)
        if not overwrite and not self.manifest_path.is_file() and self.out.foreign_entries():
            raise ValueError(f"{self.folder} exists and is not an evaluation run folder; choose another "
                             "output folder or pass --overwrite (overwrite=True) to replace its contents")
        self.out.lock()
        if overwrite:
            self.clear()
        old = self.manifest()
        if old is None:
            self.out.write_json(MANIFEST, {"format": RUN_FORMAT, "status": "running", "config": config,
                                           "environments": [environment()]})
            return set()
        done, damaged = self._scan(old)
        if old.get("status") == "finished" and not damaged and len(done) >= self._expected(old["config"], done):
            raise ValueError(f"{self.folder} holds a finished evaluation; pass --overwrite "
                             "(overwrite=True) to redo it, choose another output folder, or rebuild its "
                             f"reports with `minnorm report {self.folder}`")
        diff = _differences(_comparable(old["config"]), _comparable(config))
        if diff:
            raise ValueError(f"{self.folder} holds an unfinished run with other settings, so it cannot be "
                             "resumed with these: " + "; ".join(diff) +
                             ". Rerun with the saved settings, or pass --overwrite to start afresh")
        for err in damaged:
            warnings.warn(f"{err.path} is damaged ({err.why}); recomputing that batch", stacklevel=2)
            self.out.remove([_batch_name(int(_BATCH_NAME.fullmatch(err.path.name).group(1)), s)
                                      for s in ("json", "pt")])
        old.update(config=config, status="running")  # report-only settings may change
        old.setdefault("environments", []).append(environment())
        self.out.write_json(MANIFEST, old)
        return done

    @staticmethod
    def _expected(config: dict[str, Any], done: set[int]) -> int:
        try:
            return math.ceil(int(config["data"]["samples"]) / int(config["batch_size"]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return len(done)

    def clear(self) -> None:
        """Remove what a previous run wrote here (the files in the folder's manifest, and the
        names a run writes, for folders of older versions); nothing else."""
        known = [MANIFEST, *_REPORT_FILES]
        if self.batches.is_dir() and not self.batches.is_symlink():
            known += [f"{BATCHES}/{n}" for n in os.listdir(self.batches) if _BATCH_NAME.fullmatch(n)]
        self.out.clear_own_files(known if self.manifest_path.exists() or self.out.files() else [])

    def _indices(self) -> list[int]:
        if not self.batches.is_dir():
            return []
        found = (_BATCH_NAME.fullmatch(n) for n in os.listdir(self.batches))
        return sorted(int(m.group(1)) for m in found if m and m.group(2) == "json")

    def _scan(self, manifest: dict[str, Any] | None = None) -> tuple[set[int], list[DamagedBatch]]:
        done, damaged = set(), []
        checked = self._checked(manifest)
        for index in self._indices():
            try:
                self.read_batch(index, checked=checked)
                done.add(index)
            except DamagedBatch as err:
                damaged.append(err)
        return done, damaged

    def _checked(self, manifest: dict[str, Any] | None = None) -> bool:
        manifest = manifest if manifest is not None else self.manifest()
        return bool(manifest) and int(manifest.get("format", 1)) >= 2

    def done(self) -> set[int]:
        """The batches saved intact."""
        return self._scan()[0]

    def save_batch(self, index: int, record: dict[str, Any], tensors: dict[str, torch.Tensor] | None) -> None:
        """Write batch ``index``: its tensors, then its JSON record (the commit marker), each with
        a SHA-256 in the record."""
        record = json_safe(record)
        record.pop("sha256", None)
        record.pop("tensors_sha256", None)
        if tensors is not None:
            data = torch_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
            self.out.write_bytes(_batch_name(index, "pt"), data)
            record["tensors_sha256"] = sha256(data)
        record["sha256"] = record_digest(record)
        self.out.write_json(_batch_name(index, "json"), record)

    def read_batch(self, index: int, *, checked: bool | None = None) -> dict[str, Any]:
        """Batch ``index``'s record, checked against its checksums (``DamagedBatch`` if not)."""
        path = self.folder / _batch_name(index, "json")
        data = self.out.read_bytes(_batch_name(index, "json"))
        if data is None:
            raise DamagedBatch(path, "missing or not a regular file")
        try:
            record = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as err:
            raise DamagedBatch(path, f"not valid JSON: {err}") from None
        if not isinstance(record, dict) or record.get("batch") != index:
            raise DamagedBatch(path, f"it does not hold batch {index}")
        if checked if checked is not None else self._checked():
            if record.get("sha256") != record_digest(record):
                raise DamagedBatch(path, "its contents do not match its SHA-256: edited or truncated")
            if "tensors_sha256" in record:
                self._tensor_bytes(index, record)
        record.pop("sha256", None)
        return record

    def _tensor_bytes(self, index: int, record: dict[str, Any]) -> bytes:
        data = self.out.read_bytes(_batch_name(index, "pt"))
        pt = self.folder / _batch_name(index, "pt")
        if data is None:
            raise DamagedBatch(pt, "its tensors file is missing")
        if record.get("tensors_sha256") is not None and sha256(data) != record["tensors_sha256"]:
            raise DamagedBatch(pt, "it does not match the SHA-256 recorded in its batch JSON")
        return data

    def load_batches(self) -> list[dict[str, Any]]:
        """Every saved batch in order; a damaged one raises ``DamagedBatch`` naming it."""
        checked = self._checked()
        return [self.read_batch(i, checked=checked) for i in self._indices()]

    def load_tensors(self, index: int) -> dict[str, torch.Tensor] | None:
        """Batch ``index``'s saved inputs and adversarials (``None`` if it kept none)."""
        pt = self.folder / _batch_name(index, "pt")
        if not os.path.lexists(pt):
            return None
        record = self.read_batch(index, checked=False)
        data = self._tensor_bytes(index, record if self._checked() else {})
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 (a damaged file; the unpickler raises several types)
            raise DamagedBatch(pt, f"unreadable: {_torch_refusal(err)}") from None

    def finish(self) -> None:
        """Mark the run finished and release the folder."""
        manifest = self.manifest()
        manifest["status"] = "finished"
        manifest["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.out.write_json(MANIFEST, manifest)
        self.close()

    def close(self) -> None:
        """Release the folder's lock (without marking the run finished): for a run that stopped
        on an error in a process that goes on (the lock is released at exit anyway)."""
        self.out.unlock()
