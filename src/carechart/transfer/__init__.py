"""Bulk transfer: ``carechart import`` (FHIR Bundles and NDJSON in) and ``carechart export``
(NDJSON per type with a SHA-256 manifest out, and its verification)."""

from carechart.transfer.exporter import ExportResult, Verification, export_tenant, verify_export
from carechart.transfer.importer import ImportReport, Rejection, import_path

__all__ = [
    "ExportResult",
    "ImportReport",
    "Rejection",
    "Verification",
    "export_tenant",
    "import_path",
    "verify_export",
]
