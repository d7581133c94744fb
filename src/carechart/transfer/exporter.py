"""``carechart export``: a tenant's current resources as NDJSON, one file per type, with a
manifest of SHA-256 digests (SECURITY D5), and ``--verify`` to check a copy.

The layout follows FHIR Bulk Data's export (https://hl7.org/fhir/uv/bulkdata/export.html):
``Patient.ndjson``, ``Observation.ndjson``, ... one resource per line as stored (current
versions, deleted ones left out), and ``manifest.json`` listing each file with its type,
``count`` and ``sha256``. ``manifest.json.sha256`` holds the manifest's own digest in the
format ``sha256sum -c`` reads, so a changed byte anywhere (a file, the manifest or the
digest) is detected. Digests detect change, not a forger who rewrites both a file and the
manifest: keep the digest of the manifest apart from the copy when that matters.

Files are created 0600 in a directory created 0700 (the export holds PHI in clear), and only
in an empty or new directory, so that no earlier export is overwritten or mixed in. Reading
is one read-only unit of work, so the export is one consistent snapshot on PostgreSQL; the
export is audited per type (action ``export``) once the files are written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from carechart.audit.chain import AuditRecord
from carechart.auth.cli import CLI_CLIENT
from carechart.context import AppContext
from carechart.errors import BadRequest
from carechart.fhir.definitions import load_definitions
from carechart.fhir.model import format_instant
from carechart.transfer import repository

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.json.sha256"
NDJSON = ".ndjson"
PAGE = 1_000
_READ_BLOCK = 1 << 20

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class ExportedFile:
    resource_type: str
    name: str
    count: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ExportResult:
    directory: Path
    tenant: str
    transaction_time: str
    files: tuple[ExportedFile, ...]

    @property
    def resources(self) -> int:
        return sum(f.count for f in self.files)


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    reason: str


@dataclass(frozen=True, slots=True)
class Verification:
    files: int  # data files the manifest lists
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _create_private(path: Path) -> int:
    """A new file readable by its owner only; an existing one is never overwritten."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def _prepare_directory(directory: Path) -> None:
    if directory.exists():
        if not directory.is_dir():
            raise BadRequest("the export destination exists and is not a directory")
        if any(directory.iterdir()):
            raise BadRequest("the export directory is not empty; choose a new or empty one")
        return
    directory.mkdir(mode=0o700, parents=True)


def export_tenant(
    ctx: AppContext,
    directory: Path,
    *,
    tenant: str | None = None,
    types: Sequence[str] = (),
    progress: Progress | None = None,
) -> ExportResult:
    """Write the tenant's current resources (of ``types``, or all) under ``directory``."""
    tenant = tenant or ctx.settings.default_tenant
    definitions = load_definitions()
    for name in types:
        if not definitions.is_resource_type(name):
            raise BadRequest(f"{name} is not a resource type")
    _prepare_directory(directory)
    written: list[Path] = []
    files: list[ExportedFile] = []
    moment = format_instant(datetime.now(UTC))
    try:
        with ctx.store(write=False, tenant=tenant) as store:
            chosen = sorted(set(types)) or repository.resource_types(store.conn, tenant)
            for resource_type in chosen:
                path = directory / f"{resource_type}{NDJSON}"
                digest = hashlib.sha256()
                count = 0
                after: str | None = None
                descriptor = _create_private(path)
                written.append(path)
                with os.fdopen(descriptor, "wb") as out:
                    while True:
                        rows = repository.current_page(
                            store.conn, tenant, resource_type, after, PAGE
                        )
                        for row in rows:
                            # Bodies are stored as compact JSON (no newline inside): one line.
                            line = (
                                store.open_body(
                                    resource_type, row.id, row.version_id, row.key_version, row.body
                                )
                                + b"\n"
                            )
                            out.write(line)
                            digest.update(line)
                        count += len(rows)
                        if progress is not None and rows:
                            progress(len(rows))
                        if len(rows) < PAGE:
                            break
                        after = rows[-1].id
                if count == 0:
                    path.unlink()  # a requested type with nothing in it: no file, as in Bulk Data
                    written.remove(path)
                    continue
                files.append(ExportedFile(resource_type, path.name, count, digest.hexdigest()))
        manifest = _manifest(moment, tenant, files)
        for name, content in (
            (MANIFEST, manifest),
            (MANIFEST_DIGEST, f"{hashlib.sha256(manifest).hexdigest()}  {MANIFEST}\n".encode()),
        ):
            descriptor = _create_private(directory / name)
            written.append(directory / name)
            with os.fdopen(descriptor, "wb") as out:
                out.write(content)
        # An export is a disclosure (SECURITY C1): if it cannot be recorded, it is undone.
        ctx.audit(
            tenant,
            [
                AuditRecord(
                    action="export",
                    outcome="success",
                    client_id=CLI_CLIENT.client_id,
                    resource_type=f.resource_type,
                )
                for f in files
            ],
        )
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return ExportResult(directory, tenant, moment, tuple(files))


def _manifest(moment: str, tenant: str, files: Sequence[ExportedFile]) -> bytes:
    document: dict[str, Any] = {
        "transactionTime": moment,
        "request": f"carechart export --tenant {tenant}",
        "requiresAccessToken": False,
        "output": [
            {"type": f.resource_type, "url": f.name, "count": f.count, "sha256": f.sha256}
            for f in files
        ],
        "error": [],
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def _file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 and number of lines, streamed."""
    digest = hashlib.sha256()
    lines = 0
    with path.open("rb") as stream:
        while block := stream.read(_READ_BLOCK):
            digest.update(block)
            lines += block.count(b"\n")
    return digest.hexdigest(), lines


def verify_export(directory: Path) -> Verification:
    """Check every file of an export against its manifest and the manifest against its
    digest; every problem names its file."""
    problems: list[Problem] = []
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return Verification(0, (Problem(MANIFEST, "missing"),))
    manifest_bytes = manifest_path.read_bytes()
    digest_path = directory / MANIFEST_DIGEST
    if not digest_path.is_file():
        problems.append(Problem(MANIFEST_DIGEST, "missing"))
    else:
        expected = digest_path.read_text("utf-8", errors="replace").split()
        if not expected or expected[0] != hashlib.sha256(manifest_bytes).hexdigest():
            problems.append(Problem(MANIFEST, "does not match its SHA-256 in " + MANIFEST_DIGEST))
    try:
        manifest = json.loads(manifest_bytes)
        outputs = manifest["output"]
        if not isinstance(outputs, list):
            raise TypeError("output is not a list")
    except (ValueError, KeyError, TypeError):
        problems.append(Problem(MANIFEST, "is not a readable export manifest"))
        return Verification(0, tuple(problems))
    listed: set[str] = set()
    for item in outputs:
        name = item.get("url") if isinstance(item, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            problems.append(Problem(MANIFEST, "lists a file outside the export directory"))
            continue
        listed.add(name)
        path = directory / name
        if not path.is_file():
            problems.append(Problem(name, "missing"))
            continue
        digest, lines = _file_digest(path)
        if digest != item.get("sha256"):
            problems.append(Problem(name, "SHA-256 does not match the manifest"))
        elif lines != item.get("count"):
            problems.append(Problem(name, "line count does not match the manifest"))
    for extra in sorted(p.name for p in directory.iterdir()):
        if extra not in listed and extra not in (MANIFEST, MANIFEST_DIGEST):
            problems.append(Problem(extra, "is not listed in the manifest"))
    return Verification(len(listed), tuple(problems))
