"""File I/O shared by every step.

Every writer goes through :func:`atomic_path`: it writes to a temporary file in the destination's
folder and renames it into place, so a killed job never leaves a file that looks complete.
Readers check what they read and raise :class:`~lmid.errors.InputFileError` naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lmid.errors import InputFileError, LmidError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- atomic writes
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    ``suffix`` defaults to the destination's full suffix (``.nii.gz``, ``.npz``) so libraries that
    look at the extension write the right format.
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputFileError(parent, f"cannot create output folder ({err.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise InputFileError(parent, "output folder is not writable")
    if path.is_dir():
        raise InputFileError(path, "is a folder: give the path of a file to write")
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=parent)
    except OSError as err:
        raise InputFileError(path, f"cannot write ({err.strerror or err})") from None
    # mkstemp makes the file private (0600); give it the mode any new file gets under the umask,
    # so that a shared project or DVC cache stays readable by the group.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as err:
            # A failed write (a full disk, a file-size limit) or rename: the error names the file
            # being made, not the temporary one that is removed below (nor none at all).
            if err.filename in (None, str(tmp), str(path)):
                raise InputFileError(path, f"cannot write ({err.strerror or err})") from None
            raise
    finally:
        if tmp.exists():
            tmp.unlink()


#: ``<host>-<pid>-`` at the start of a staging folder's tag: which process on which machine made it.
_OWNER = re.compile(r"^(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _clear_abandoned(out_dir: Path) -> None:
    """Folders beside ``out_dir`` that a killed run of the same step left (``kill -9``, a lost
    node): staging folders are removed, and a previous output that was moved aside
    (``.<name>.old-*``) goes back into place when ``out_dir`` itself is missing.

    Only folders whose owner process is gone from this machine are touched; one still being
    written (another run, another node of a cluster) is left alone."""
    parent, host = out_dir.parent, _host_tag()
    if not parent.is_dir():
        return
    for kind in ("old", "staging"):
        prefix = f".{out_dir.name}.{kind}-"
        for path in sorted(parent.iterdir()):
            owner = _OWNER.match(path.name[len(prefix) :]) if path.name.startswith(prefix) else None
            if owner is None or owner["host"] != host or _process_alive(int(owner["pid"])) or not path.is_dir():
                continue
            if kind == "old" and not out_dir.exists():
                os.replace(path, out_dir)
                log.warning("%s: put back the previous output from %s, left by a killed run", out_dir, path.name)
            else:
                shutil.rmtree(path, ignore_errors=True)
                log.warning("%s: removed %s, left by a killed run of this step", out_dir, path.name)


@contextlib.contextmanager
def replaced_folder(out_dir: str | Path, owns: Callable[[str], bool]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out_dir``; on success it replaces ``out_dir`` whole.

    A step that writes several files that belong together (the simulated volumes and their
    ``phantom.json``, the splits and their manifest) builds them here, so that an interrupted or
    failed run leaves the old folder exactly as it was: the files appear together or not at all.
    ``out_dir`` may only hold files the step itself writes (``owns(name)``); anything else is
    refused rather than deleted.
    """
    out_dir = Path(out_dir)
    _clear_abandoned(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputFileError(out_dir, "exists and is not a folder")
        foreign = sorted(p.name for p in out_dir.iterdir() if not owns(p.name))
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise InputFileError(
                out_dir,
                f"holds files this step does not write ({', '.join(foreign[:3])}{more}); choose a new or empty folder",
            )
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-{_host_tag()}-{os.getpid()}-", dir=parent))
    except OSError as err:
        raise InputFileError(parent, f"cannot create the output folder here ({err.strerror})") from None
    os.chmod(stage, 0o777 & ~_umask())
    try:
        try:
            yield stage
        except InputFileError as err:
            # A file that could not be written in the staging folder is named by where it was going.
            inside = os.path.relpath(err.path, stage) if err.path.startswith(str(stage) + os.sep) else None
            if inside is None:
                raise
            raise InputFileError(out_dir / inside, err.problem) from None
        old = parent / (f".{out_dir.name}.old-" + stage.name[len(f".{out_dir.name}.staging-") :])
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(stage, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputFileError(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None


def save_npz(path: str | Path, **arrays) -> None:
    """Compressed ``.npz`` written atomically and byte-for-byte reproducibly.

    ``np.savez_compressed`` stamps every member with the current time, so the same arrays would
    give different bytes (and DVC would see a changed file). Members here carry a fixed date.
    Strings must be numpy unicode arrays (no pickle).
    """
    import zipfile

    with atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key, value in arrays.items():
                value = np.asanyarray(value)
                if value.dtype == object:
                    raise TypeError(f"{key}: object arrays would need pickle; use a unicode dtype")
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w") as fh:
                    np.lib.format.write_array(fh, value, allow_pickle=False)


def load_npz(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` (never with pickle) and check required keys exist."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zlib.error) as err:
        raise InputFileError(path, f"not a readable .npz archive ({err})") from None
    except Exception as err:  # zipfile.BadZipFile and friends
        raise InputFileError(path, f"not a readable .npz archive ({type(err).__name__}: {err})") from None
    missing = [k for k in required if k not in out]
    if missing:
        raise InputFileError(path, f"missing arrays {missing}; has {sorted(out)}")
    return out


# ------------------------------------------------------------------------------------- NIfTI
def load_volume(path: str | Path, dtype=np.float32):
    """Load a 3-D NIfTI volume, checked: returns ``(array, affine)``.

    Rejects unreadable/truncated files, non-3-D data (a trailing singleton 4th axis is squeezed),
    NaN/Inf voxels and all-zero volumes, each with the file's name in the message.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise InputFileError(path, f"cannot read NIfTI volume: corrupt or truncated ({err})") from None
    except Exception as err:  # nibabel raises a zoo of errors on bad headers
        raise InputFileError(path, f"cannot read NIfTI volume ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputFileError(path, f"expected a 3-D volume, got {data.ndim}-D with shape {data.shape}")
    data = np.asarray(data, dtype=dtype)
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputFileError(path, f"contains {int(bad.sum())} NaN/Inf voxels")
    if not np.any(data):
        raise InputFileError(path, "volume is all zeros (empty image)")
    # Without a usable orientation the volume's world position is a guess (nibabel falls back to
    # a default affine and warns): registration and the NIfTI outputs would then be silently wrong.
    header = getattr(img, "header", None)
    if (
        header is not None
        and "qform_code" in header
        and int(header["qform_code"]) == 0
        and int(header["sform_code"]) == 0
    ):
        raise InputFileError(path, "header has no orientation (qform_code and sform_code are both 0)")
    zooms = _stored_voxel_sizes(path, img)
    affine = np.asarray(img.affine, dtype=np.float64)
    if np.any(~np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputFileError(
            path,
            f"header has voxel sizes (pixdim) {[round(float(z), 6) for z in zooms]} mm: "
            "they must be positive and finite",
        )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        stored = "sform" if header is not None and int(header.get("sform_code", 0)) > 0 else "qform"
        problem = "holds NaN/Inf" if not np.all(np.isfinite(affine)) else "is singular (its voxel axes span no volume)"
        raise InputFileError(path, f"header has no usable orientation: its affine ({stored}) {problem}")
    return data, affine


def _stored_voxel_sizes(path: Path, img) -> np.ndarray:
    """The voxel sizes as the file stores them (``pixdim[1:4]`` of a NIfTI header).

    nibabel repairs a header as it loads it: a negative pixdim becomes its absolute value and 0
    becomes 1 mm, with only a logged warning, so the loaded header would hide a broken file."""
    import nibabel as nib

    header = getattr(img, "header", None)
    if isinstance(header, (nib.Nifti1Header, nib.Nifti2Header)):
        try:
            holder = img.file_map.get("header") or img.file_map.get("image")  # a .hdr/.img pair: the .hdr
            where = (holder.filename if holder is not None else None) or str(path)
            with nib.openers.ImageOpener(where) as fh:
                raw = type(header).from_fileobj(fh, check=False)
            return np.asarray(raw["pixdim"][1:4], dtype=float)
        except Exception:  # unreadable here means unreadable above; fall back to the loaded header
            pass
    return np.asarray(header.get_zooms()[:3], dtype=float) if header is not None else np.ones(3)


def save_volume(path: str | Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a NIfTI volume atomically; ``.nii.gz`` is gzipped with a zero mtime so the same
    volume always gives the same bytes."""
    payload = nifti_bytes(data, affine, gzipped=str(path).endswith(".gz"))
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def nifti_bytes(data: np.ndarray, affine: np.ndarray, gzipped: bool) -> bytes:
    """The bytes :func:`save_volume` writes: qform and sform both set to ``affine``, mm units,
    gzipped with a zero mtime when ``gzipped``."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    payload = img.to_bytes()
    return gzip.compress(payload, compresslevel=6, mtime=0) if gzipped else payload


def ensure_dir(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LmidError(f"{path}: cannot create folder ({err.strerror})") from None
    return path
