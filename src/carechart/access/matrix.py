"""The role x permission matrix (SECURITY B5, H2: minimum necessary).

Resource types fall into data categories; each role holds a set of SMART v2 interaction
letters (``c`` create, ``r`` read, ``u`` update, ``d`` delete, ``s`` search) per category.
A type nobody lists is denied to everyone (deny by default, B1). The README's role matrix
is generated from :data:`ROLE_MATRIX` by a test, so the two cannot drift apart.

Which patients a role reaches is a second, separate rule (:data:`CARE_TEAM_ROLES`,
:data:`OWN_COMPARTMENT_ROLES`): a nurse may read Observations, but only those of patients
in her care relationship (see :mod:`carechart.access.policy`).
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType

from carechart.auth.principal import Role
from carechart.fhir.definitions import load_definitions

LETTERS = "cruds"


class Category(StrEnum):
    demographics = "demographics"
    scheduling = "scheduling"
    clinical = "clinical"
    # What a biller needs to code a claim: the encounter, its diagnoses and procedures.
    coding = "coding"
    lab = "lab"
    financial = "financial"
    # Shared, non-patient data: practitioners, organisations, locations, terminology, ...
    reference = "reference"
    audit = "audit"


_EXPLICIT: dict[str, Category] = {
    **dict.fromkeys(("Patient", "RelatedPerson", "Person"), Category.demographics),
    **dict.fromkeys(
        ("Appointment", "AppointmentResponse", "Schedule", "Slot"), Category.scheduling
    ),
    **dict.fromkeys(("Encounter", "Condition", "Procedure", "EpisodeOfCare"), Category.coding),
    **dict.fromkeys(
        ("ServiceRequest", "Specimen", "Observation", "DiagnosticReport"), Category.lab
    ),
    **dict.fromkeys(
        (
            "Account",
            "ChargeItem",
            "Claim",
            "ClaimResponse",
            "Coverage",
            "CoverageEligibilityRequest",
            "CoverageEligibilityResponse",
            "EnrollmentRequest",
            "EnrollmentResponse",
            "ExplanationOfBenefit",
            "Invoice",
            "PaymentNotice",
            "PaymentReconciliation",
        ),
        Category.financial,
    ),
    "AuditEvent": Category.audit,
}


def category_of(resource_type: str) -> Category:
    """The data category of a resource type: listed explicitly, else clinical when the type
    belongs to the Patient compartment, else shared reference data."""
    found = _EXPLICIT.get(resource_type)
    if found is not None:
        return found
    if resource_type in load_definitions().patient_compartment:
        return Category.clinical
    return Category.reference


_ALL = dict.fromkeys(Category, LETTERS)

_GRANTS: dict[Role, dict[Category, str]] = {
    Role.physician: {
        Category.demographics: "cruds",
        Category.scheduling: "cruds",
        Category.clinical: "cruds",
        Category.coding: "cruds",
        Category.lab: "cruds",
        Category.reference: "rs",
    },
    # Nurses chart but do not delete (deletion of clinical data is a physician's call).
    Role.nurse: {
        Category.demographics: "crus",
        Category.scheduling: "crus",
        Category.clinical: "crus",
        Category.coding: "crus",
        Category.lab: "crus",
        Category.reference: "rs",
    },
    Role.front_desk: {
        Category.demographics: "crus",
        Category.scheduling: "cruds",
        Category.reference: "rs",
    },
    Role.lab_technician: {
        Category.lab: "crus",
        Category.demographics: "rs",
        Category.reference: "rs",
    },
    Role.billing: {
        Category.financial: "cruds",
        Category.coding: "rs",
        Category.demographics: "rs",
        Category.reference: "rs",
    },
    # Administrators run the system, not the charts: no patient data at all.
    Role.admin: {Category.reference: "cruds"},
    # The audit trail is written by the server only; auditors read it.
    Role.auditor: {Category.audit: "rs"},
    # Patients read their own record (the compartment rule narrows it to theirs).
    Role.patient: {
        Category.demographics: "rs",
        Category.scheduling: "rs",
        Category.clinical: "rs",
        Category.coding: "rs",
        Category.lab: "rs",
        Category.financial: "rs",
        Category.reference: "rs",
    },
    # Clients: whatever their registration's scopes allow, except the audit trail.
    Role.system: {c: v for c, v in _ALL.items() if c is not Category.audit},
}
ROLE_MATRIX: MappingProxyType[Role, MappingProxyType[Category, str]] = MappingProxyType(
    {role: MappingProxyType(grants) for role, grants in _GRANTS.items()}
)

# Clinicians see only patients they have a care relationship with (B2), or break-glass.
CARE_TEAM_ROLES = frozenset({Role.physician, Role.nurse})
# Patient users see only their own compartment.
OWN_COMPARTMENT_ROLES = frozenset({Role.patient})
# May open a break-glass grant (B9).
BREAK_GLASS_ROLES = frozenset({Role.physician, Role.nurse})

# v3 PurposeOfUse (http://terminology.hl7.org/CodeSystem/v3-ActReason) recorded per role.
PURPOSE_OF_USE: MappingProxyType[Role, str] = MappingProxyType(
    {
        Role.physician: "TREAT",
        Role.nurse: "TREAT",
        Role.front_desk: "HOPERAT",
        Role.lab_technician: "TREAT",
        Role.billing: "HPAYMT",
        Role.admin: "HSYSADMIN",
        Role.auditor: "HOPERAT",
        Role.patient: "PATRQT",
        Role.system: "HOPERAT",
    }
)
BREAK_GLASS_PURPOSE = "BTG"


def role_letters(role: Role, resource_type: str) -> str:
    return ROLE_MATRIX[role].get(category_of(resource_type), "")


def matrix_rows() -> list[tuple[str, list[str]]]:
    """The matrix as README table rows: (category, letters per role in :class:`Role` order)."""
    return [
        (category.value, [ROLE_MATRIX[role].get(category, "") or "-" for role in Role])
        for category in Category
    ]
