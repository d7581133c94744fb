"""OperationOutcome rendering (http://hl7.org/fhir/R4/operationoutcome.html)."""

from __future__ import annotations

from typing import Any

from carechart.errors import Issue


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    rendered: list[dict[str, Any]] = []
    for issue in issues:
        item: dict[str, Any] = {
            "severity": issue.severity,
            "code": issue.code,
            "diagnostics": issue.message,
        }
        if issue.expression:
            item["expression"] = [issue.expression]
        rendered.append(item)
    return {"resourceType": "OperationOutcome", "issue": rendered}


def information(message: str) -> dict[str, Any]:
    return operation_outcome([Issue(message=message, code="informational", severity="information")])
