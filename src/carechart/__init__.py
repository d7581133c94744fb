"""Carechart: a FHIR R4 electronic health records server."""

__version__ = "0.1.0"
