"""Small helpers shared by test modules (import as ``from helpers import …``)."""

from __future__ import annotations

import pathlib
import uuid


def snapshot(root) -> dict[str, bytes | None]:
    """Every path under ``root`` (folders as None) with the bytes of every file: two equal
    snapshots mean nothing was created, removed or changed."""
    root = pathlib.Path(root)
    if not root.exists():
        return {}
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = None if p.is_dir() else p.read_bytes()
    return out


def new_remote(kind: str, tmp_path, request) -> tuple[str, dict]:
    """(url, options) of a fresh remote: ``"dir"``, a folder under ``tmp_path``; ``"s3"``, a
    new bucket on moto's S3 server (the ``s3_endpoint`` fixture, through ``request``)."""
    if kind == "dir":
        return str(pathlib.Path(tmp_path) / "remote"), {}
    endpoint = request.getfixturevalue("s3_endpoint")
    import s3fs

    bucket = f"tvreg-{uuid.uuid4().hex[:20]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/team", {"endpoint_url": endpoint, "skip_instance_cache": True,
                                   "use_listings_cache": False}
