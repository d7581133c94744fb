"""Fetch the pinned official FHIR R4 package from the npm registry and verify it.

The FHIR 4.0.1 release is published on the npm registry as ``hl7.fhir.r4.examples@4.0.1``
(CC0): every StructureDefinition, SearchParameter, ValueSet, CodeSystem and
CompartmentDefinition of the release, plus the specification's example resources.

This runs at install/generate time only (``make fhir-package``), never at run time.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "hl7.fhir.r4.examples"
VERSION = "4.0.1"
TARBALL = f"{PACKAGE}-{VERSION}.tgz"
SHA256 = "dce87f1b5b9341867033f7d1f544fa1b5232503f6d62813887ac6b8a8b6cb682"

DEFAULT_CACHE = Path(
    os.environ.get("CARECHART_FHIR_PACKAGE_DIR", Path.home() / ".cache" / "carechart")
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_package(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the directory holding the extracted package files (``.../package``).

    Test workers call this at once: an exclusive lock on the cache makes one of them fetch
    and extract while the others wait, instead of deleting each other's files."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_package(cache_dir)


def _ensure_package(cache_dir: Path) -> Path:
    extracted = cache_dir / f"{PACKAGE}-{VERSION}" / "package"
    marker = extracted.parent / ".verified"
    if marker.exists() and marker.read_text() == SHA256:
        return extracted
    tarball = cache_dir / TARBALL
    if not tarball.exists() or sha256_of(tarball) != SHA256:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent", "--pack-destination", tmp],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            shutil.move(str(Path(tmp) / TARBALL), tarball)
    actual = sha256_of(tarball)
    if actual != SHA256:
        tarball.unlink()
        raise SystemExit(f"{TARBALL}: sha256 {actual} does not match the pinned {SHA256}")
    if extracted.parent.exists():
        shutil.rmtree(extracted.parent)
    extracted.parent.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(extracted.parent, filter="data")
    marker.write_text(SHA256)
    return extracted


if __name__ == "__main__":
    print(ensure_package(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE))
