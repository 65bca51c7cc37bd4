"""The trainer's durable state under a storage URI: a local path, a shared mount, or `s3://...`.

Storage goes through `pyarrow.fs`, as RLlib and Tune's `storage_path` do, so any filesystem
pyarrow can open works and the node that wrote the state does not matter. Object stores cannot
rename a directory atomically, so each save is a new version directory, and a one-line pointer
(`LATEST`) names the complete one: it is written only after the version's files are all there,
and a single small object appears whole. A crash mid-save leaves the previous pointer, hence the
previous state. The newest `KEEP` versions are kept, so a reader that read the pointer just
before a save still finds what it names.

    <uri>/<name>/LATEST          "v00000042"
    <uri>/<name>/v00000042/...   the files the writer put there
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pyarrow.fs as pafs

from barp_ray.storage import filesystem

POINTER = "LATEST"
KEEP = 2


class StateStore:
    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = filesystem(uri)
        self.fs.create_dir(self.root, recursive=True)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def latest(self, name: str) -> str | None:
        try:
            with self.fs.open_input_stream(self._path(name, POINTER)) as f:
                version = f.read().decode().strip()
        except (FileNotFoundError, OSError):
            return None
        return version or None

    def save(self, name: str, version: int, write: Callable[[Path], None]) -> None:
        """`write(local_dir)` fills a scratch directory; it becomes version `version` of `name`."""
        tag = f"v{version:08d}"
        with tempfile.TemporaryDirectory(prefix="barp-state-") as tmp:
            write(Path(tmp))
            target = self._path(name, tag)
            self.fs.delete_dir_contents(target, missing_dir_ok=True)
            self.fs.create_dir(target, recursive=True)
            pafs.copy_files(tmp, target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        pending = self._path(name, f"{POINTER}.{tag}.tmp")
        with self.fs.open_output_stream(pending) as f:
            f.write(tag.encode())
        self.fs.move(pending, self._path(name, POINTER))
        self._prune(name, keep_from=tag)

    def _prune(self, name: str, keep_from: str) -> None:
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(name), allow_not_found=True))
        versions = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("v"))
        for old in versions[:-KEEP]:
            if old < keep_from:
                self.fs.delete_dir(self._path(name, old))

    def load(self, name: str, into: Path) -> bool:
        """Copy the newest complete version of `name` into the local directory `into`; False if none."""
        for _ in range(3):  # the version named may be pruned between reading the pointer and copying
            tag = self.latest(name)
            if tag is None:
                return False
            shutil.rmtree(into, ignore_errors=True)
            into.mkdir(parents=True)
            try:
                pafs.copy_files(self._path(name, tag), str(into), source_filesystem=self.fs,
                                destination_filesystem=pafs.LocalFileSystem())
                return True
            except (FileNotFoundError, OSError):
                continue
        return False
