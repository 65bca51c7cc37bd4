"""Checkpoints under a storage URI (`s3://`, `gs://`, `file://`, or a plain path), via `pyarrow.fs`.

On a cluster the node that trains is not the node that serves, so a checkpoint written to one
node's disk is lost to the others. RLlib and Tune reach shared storage through `pyarrow.fs`
(`storage_path`); so does this: training writes locally and uploads the finished directory,
and loading a URI first copies it into a local cache (RLlib restores modules from local files).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path within it; a plain path is the local filesystem."""
    if not is_uri(uri):
        uri = str(Path(uri).expanduser().resolve())
    return pafs.FileSystem.from_uri(uri)


def upload_dir(local: str | Path, uri: str) -> None:
    """Copy a finished local directory to `uri`: what was there is replaced, files are written whole."""
    fs, path = filesystem(uri)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def local_copy(uri: str, cache_root: str | Path | None = None) -> Path:
    """A local directory holding what `uri` holds (fetched again on every call: a checkpoint
    under the same URI may have been replaced by a newer training run)."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri}: no such directory")
    root = Path(cache_root or os.environ.get("BARP_CACHE_DIR") or Path.home() / ".cache" / "barp-ray") / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=hashlib.sha1(uri.encode()).hexdigest()[:12] + "-", dir=root))
    pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return tmp
