"""Small image folders decoded once: both splits as uint8 tensors in a cache file, served by the device path.

dataset.cache (image_folder), with N images in train + test at image_size S:
  auto  decode when the decoded splits, N x 3 x S x S bytes, fit the budget min(2 GiB, 1/4 of the memory
        available now) (CIFAR-10 at 32 px: 184 MB; ImageNet: 4.1 GB at 32 px, 193 GB at 224 px, so never);
        past it, read the files every epoch (the DataLoader path), saying why in one info line
  on    decode whenever the decoded splits fit the memory available now; past it, a one-line error
  off   read the files every epoch (the DataLoader path)

The cache file is <root>/.etf_cache/<S>px-<key>.pt, or, when root cannot be written (read-only data),
$XDG_CACHE_HOME/etf-train/<hash of root>/<S>px-<key>.pt (XDG_CACHE_HOME unset: ~/.cache). The key hashes every
image's path below root, label, size and mtime (both splits, in ImageFolder's order), the resize ops, S and the
PIL and torchvision versions (their decoders and resizing): any change gives a new file, which replaces the
files of the same S in that folder. It is written to a temporary name and renamed, so a killed decode leaves
no cache file (at most a hidden .tmp file, never read).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .. import options as opt
from ..errors import EtfTrainError

log = logging.getLogger("etf_train")

MODES = ("auto", "on", "off")
AUTO_BUDGET = 2 * 1024**3  # bytes; also caps what a GPU gives up to hold the data (loader.mode=auto)
FORMAT = 1  # part of the key: a change of the file's layout invalidates the old files
PROGRESS_FROM = 2000  # images: a shorter decode takes a few seconds and needs no progress bar


def cache_mode(value) -> str:
    """dataset.cache as one of MODES; YAML 1.1 reads an unquoted on / off as true / false, so those mean on / off."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    return opt.choice("dataset.cache", value, MODES)


def available_memory() -> int:
    """Bytes of memory available now: Linux's MemAvailable, else (no /proc) the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            kib = next((int(line.split()[1]) for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        kib = None
    return kib * 1024 if kib is not None else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _bytes(n: float) -> str:
    """n bytes for a message: 184 MB, 193 GB, 1.54 kB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def should_decode(mode: str, n: int, size: int, available: int, root: Path) -> bool:
    """Whether to decode n images of 3 x size x size into memory; dataset.cache=on past `available`: a one-line error."""
    need = n * 3 * size * size
    what = f"{n:,} images of 3x{size}x{size} uint8: {_bytes(need)}"
    if mode == "on" and need > available:
        raise EtfTrainError(
            f"dataset.cache=on: the decoded splits of {root} ({what}) do not fit the {_bytes(available)} of memory "
            "available; use dataset.cache=auto or off (read the files every epoch), or a smaller dataset.image_size"
        )
    budget = min(AUTO_BUDGET, available // 4)
    if mode == "auto" and need > budget:
        log.info(
            "dataset.cache=auto: reading the images of %s every epoch (DataLoader path): decoded (%s) they exceed the "
            "budget of %s (2 GiB or 1/4 of the %s available, the smaller); dataset.cache=on decodes them anyway",
            root,
            what,
            _bytes(budget),
            _bytes(available),
        )
        return False
    return mode != "off"


def folder_key(root: Path, splits: Sequence, size: int, ops: Sequence) -> str:
    """What the decoded tensors depend on, hashed: the files (path, label, size, mtime and ctime: a copy that keeps
    size and mtime, `cp -p` or `rsync -a` of a fixed-size format, still gets a new ctime), classes, ops and decoders."""
    import PIL
    import torchvision

    h = hashlib.sha256(
        repr((FORMAT, size, [repr(op) for op in ops], PIL.__version__, torchvision.__version__)).encode()
    )
    for line in sample_lines(root, splits, stat=True):
        h.update(line)
    return h.hexdigest()[:24]


def sample_lines(root: Path, splits: Sequence, stat: bool = False):
    """Per ImageFolder split, its classes, then a line per sample: path relative to root and label, with stat also
    size, mtime and ctime (a stat of every file)."""
    for ds in splits:
        yield repr(ds.classes).encode()
        for path, label in ds.samples:
            line = f"{os.path.relpath(path, root)}\0{label}"
            if stat:
                st = os.stat(path)
                line += f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
            yield (line + "\n").encode()


def cache_dirs(root: Path) -> list[Path]:
    """Where a cache file may be, in order: beside the data, then the user's cache folder (for read-only data)."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "etf-train"
    return [root / ".etf_cache", user / hashlib.sha256(str(root).encode()).hexdigest()[:16]]


def _load(path: Path, key: str, shapes: list[tuple[int, ...]]) -> tuple[Tensor, Tensor] | None:
    """The tensors saved at path under `key` with these shapes; None: no such file, or not usable (it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:  # damaged on disk since it was written
        log.warning("dataset.cache: %s is unreadable (%s); decoding the images again", path, err)
        return None
    tensors = (saved.get("train"), saved.get("test"))
    ok = saved.get("key") == key and all(
        isinstance(x, Tensor) and x.dtype == torch.uint8 and tuple(x.shape) == s for x, s in zip(tensors, shapes)
    )
    return tensors if ok else None


def _decode(splits: Sequence, ops: Sequence, size: int, desc: str) -> tuple[Tensor, ...]:
    """Every image of every split through the folder's loader (PIL, RGB) and `ops`, as uint8 (N, 3, size, size):
    the pixels the DataLoader path's ToTensor sees, before its division by 255."""
    total = sum(len(ds) for ds in splits)
    out = tuple(torch.empty(len(ds), 3, size, size, dtype=torch.uint8) for ds in splits)
    with tqdm(total=total, desc=desc, unit="img", disable=total < PROGRESS_FROM, leave=False) as bar:
        for ds, x in zip(splits, out):
            for i, (path, _) in enumerate(ds.samples):
                img = ds.loader(path)
                for op in ops:
                    img = op(img)
                x[i] = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # HWC -> CHW
                bar.update()
    return out


def _name(size: int, key: str) -> str:
    return f"{size}px-{key}.pt"


def _save(tensors: tuple[Tensor, ...], key: str, size: int, dirs: Sequence[Path]) -> Path | None:
    """Write the cache file into the first folder that takes it (temporary name, then rename); None: none did."""
    name = _name(size, key)
    for folder in dirs:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        except OSError:  # read-only data folder (or a file where the folder should be): the next place
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"key": key, "train": tensors[0], "test": tensors[1]}, f)
                f.flush()
                os.fsync(f.fileno())  # the data on disk before the name: a crash cannot leave a named, empty file
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared data folder's cache from its other users
            os.replace(tmp, folder / name)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if not isinstance(err, OSError):
                raise
            continue  # e.g. a full disk: the next place
        for stale in folder.glob(_name(size, "*")):  # the same folder at this size before it changed
            if stale.name != name:
                stale.unlink(missing_ok=True)
        return folder / name
    return None


def decoded(root: Path, splits: Sequence, size: int, ops: Sequence, mode: str) -> tuple[Tensor, Tensor] | None:
    """The ImageFolder splits as uint8 (N, 3, size, size) tensors (cache file, or decoded once into it) or None:
    dataset.cache says to read the files every epoch. ops: the resizing both splits share, before the crop and flip."""
    if not should_decode(mode, sum(len(ds) for ds in splits), size, available_memory(), root):
        return None
    key, dirs = folder_key(root, splits, size, ops), cache_dirs(root)
    shapes = [(len(ds), 3, size, size) for ds in splits]
    images = f"{sum(s[0] for s in shapes):,} images of {root}"
    for folder in dirs:
        tensors = _load(folder / _name(size, key), key, shapes)
        if tensors is not None:
            log.info("dataset.cache: %s read from %s", images, folder / _name(size, key))
            return tensors
    start = time.perf_counter()
    tensors = _decode(splits, ops, size, f"decoding {root.name} once (dataset.cache)")
    path = _save(tensors, key, size, dirs)
    took = f"{images} decoded in {time.perf_counter() - start:.1f} s"
    if path is None:
        where = " nor ".join(map(str, dirs))
        log.warning(
            "dataset.cache: %s, but neither %s can be written: they will be decoded again next run", took, where
        )
    else:
        log.info("dataset.cache: %s, into %s", took, path)
    return tensors
