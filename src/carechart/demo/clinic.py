"""A synthetic primary-care clinic, built in memory: pure functions of (seed, size, date).

Every resource of the demo comes from here as a plain FHIR R4 JSON object that passes the
store's validation. Randomness is drawn from ``random.Random`` seeded with text (hashed with
SHA-512 by the standard library, so the same on every run and platform), one generator for
the clinic and one per patient: patient ``i`` of seed ``s`` is the same whatever the batch
size, and charts can be built in any order.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from carechart.auth.principal import Role
from carechart.demo import vocabulary as v
from carechart.labs.critical_limits import LabLimits, load_critical_limits
from carechart.labs.flagging import Interpretation, numeric_flag

# The clinic's identifier namespaces (the .example domain is reserved for examples).
SID = "https://riverside.demo-clinic.example/fhir/sid"
MRN_SYSTEM = f"{SID}/mrn"
STAFF_SYSTEM = f"{SID}/staff"
ORGANIZATION_SYSTEM = f"{SID}/organization"
CLINIC_NAME = "Riverside Family Medicine"
# Demo data is dated relative to this day, not to the clock, so that a seed always gives the
# same clinic; ``demo load --as-of`` moves it.
DEFAULT_AS_OF = date(2026, 9, 30)
# How many patients one physician's panel holds, roughly; the clinic has 4 to 12 physicians.
PANEL_SIZE = 2_000
MIN_PHYSICIANS, MAX_PHYSICIANS = 4, 12

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
ORGANIZATION_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
MARITAL_STATUS = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
REQUEST_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"

#: (type, id, body): one resource of the demo, its id chosen up front so that the others can
#: reference it.
DemoResource = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class StaffMember:
    """Someone who gets an account. Clinicians are also a Practitioner (``practitioner_id``)."""

    role: Role
    given: str
    family: str
    gender: str
    practitioner_id: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.given} {self.family}"

    def email(self, domain: str) -> str:
        return f"{self.given}.{self.family}@{domain}".lower()


@dataclass(frozen=True, slots=True)
class Clinic:
    seed: int
    as_of: date
    organization_id: str
    location_ids: tuple[str, ...]
    physicians: tuple[StaffMember, ...]
    nurse: StaffMember
    staff: tuple[StaffMember, ...]  # every account: physicians, the nurse, the office
    resources: tuple[DemoResource, ...]  # Organization, Location, Practitioner(Role)s
    limits: dict[str, LabLimits] = field(repr=False, compare=False)


def email_domain(seed: int, tenant: str) -> str:
    """The demo staff's e-mail domain: per seed and tenant, so that several demo clinics can
    share the identity tenant without their usernames colliding."""
    label = re.sub(r"[^a-z0-9-]+", "-", tenant.lower()).strip("-") or "tenant"
    return f"seed{seed}.{label}.example"


def physician_count(patients: int) -> int:
    return max(MIN_PHYSICIANS, min(MAX_PHYSICIANS, -(-patients // PANEL_SIZE)))


def _new_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ref(resource_type: str, resource_id: str, display: str | None = None) -> dict[str, str]:
    reference = {"reference": f"{resource_type}/{resource_id}"}
    if display is not None:
        reference["display"] = display
    return reference


def _phone(rng: random.Random) -> str:
    return f"({v.AREA_CODE}) 555-01{rng.randrange(100):02d}"


def _address(rng: random.Random, use: str) -> dict[str, Any]:
    town, postal = rng.choice(v.TOWNS)
    line = f"{rng.randint(1, 9899)} {rng.choice(v.STREETS)} {rng.choice(v.STREET_SUFFIXES)}"
    return {
        "use": use,
        "type": "both",
        "line": [line],
        "city": town,
        "state": v.STATE,
        "postalCode": postal,
        "country": "US",
    }


def plan_clinic(seed: int, patients: int, as_of: date = DEFAULT_AS_OF) -> Clinic:
    """The clinic itself: its organization, two sites, physicians, a nurse and office staff."""
    rng = random.Random(f"carechart-demo/{seed}/clinic")
    organization_id = _new_id(rng)
    location_ids = (_new_id(rng), _new_id(rng))
    taken: set[tuple[str, str]] = set()

    def person(role: Role, clinician: bool) -> StaffMember:
        while True:  # distinct names, so that e-mail addresses are distinct too
            gender = rng.choice(("female", "male"))
            given = rng.choice(v.FEMALE_GIVEN if gender == "female" else v.MALE_GIVEN)
            family = rng.choice(v.FAMILY)
            if (given, family) not in taken:
                taken.add((given, family))
                break
        return StaffMember(role, given, family, gender, _new_id(rng) if clinician else None)

    physicians = tuple(person(Role.physician, True) for _ in range(physician_count(patients)))
    nurse = person(Role.nurse, True)
    office = tuple(
        person(role, False)
        for role in (Role.front_desk, Role.billing, Role.lab_technician, Role.auditor)
    )
    organization: dict[str, Any] = {
        "resourceType": "Organization",
        "id": organization_id,
        "identifier": [{"system": ORGANIZATION_SYSTEM, "value": f"DEMO-{seed}"}],
        "active": True,
        "type": [
            {
                "coding": [
                    {"system": ORGANIZATION_TYPE, "code": "prov", "display": "Healthcare Provider"}
                ]
            }
        ],
        "name": CLINIC_NAME,
        "telecom": [{"system": "phone", "value": f"({v.AREA_CODE}) 555-0100", "use": "work"}],
        "address": [_address(rng, "work")],
    }
    resources: list[DemoResource] = [("Organization", organization_id, organization)]
    for location_id, site in zip(location_ids, ("Main Street", "Northside"), strict=True):
        resources.append(
            (
                "Location",
                location_id,
                {
                    "resourceType": "Location",
                    "id": location_id,
                    "status": "active",
                    "name": f"{CLINIC_NAME}, {site}",
                    "mode": "instance",
                    "type": [
                        {
                            "coding": [
                                {
                                    "system": ROLE_CODE,
                                    "code": "FMC",
                                    "display": "Family Medicine Clinic",
                                }
                            ]
                        }
                    ],
                    "telecom": [{"system": "phone", "value": _phone(rng), "use": "work"}],
                    "address": _address(rng, "work"),
                    "managingOrganization": _ref("Organization", organization_id, CLINIC_NAME),
                },
            )
        )
    for number, member in enumerate((*physicians, nurse), start=1):
        assert member.practitioner_id is not None
        doctor = member.role is Role.physician
        resources.append(
            (
                "Practitioner",
                member.practitioner_id,
                {
                    "resourceType": "Practitioner",
                    "id": member.practitioner_id,
                    "identifier": [{"system": STAFF_SYSTEM, "value": f"DEMO-{seed}-{number:03d}"}],
                    "active": True,
                    "name": [
                        {
                            "use": "official",
                            "family": member.family,
                            "given": [member.given],
                            **(
                                {"prefix": ["Dr."], "suffix": ["MD"]}
                                if doctor
                                else {"suffix": ["RN"]}
                            ),
                        }
                    ],
                    "telecom": [{"system": "phone", "value": _phone(rng), "use": "work"}],
                    "gender": member.gender,
                    "qualification": [
                        {"code": {"text": "Doctor of Medicine" if doctor else "Registered Nurse"}}
                    ],
                },
            )
        )
        role_id = _new_id(rng)
        role_code, role_display = ("doctor", "Doctor") if doctor else ("nurse", "Nurse")
        resources.append(
            (
                "PractitionerRole",
                role_id,
                {
                    "resourceType": "PractitionerRole",
                    "id": role_id,
                    "active": True,
                    "practitioner": _ref("Practitioner", member.practitioner_id, _display(member)),
                    "organization": _ref("Organization", organization_id, CLINIC_NAME),
                    "code": [
                        {
                            "coding": [
                                {
                                    "system": PRACTITIONER_ROLE,
                                    "code": role_code,
                                    "display": role_display,
                                }
                            ]
                        }
                    ],
                    "specialty": [v.FAMILY_PRACTICE.concept()],
                    "location": [_ref("Location", location_ids[number % 2])],
                },
            )
        )
    return Clinic(
        seed=seed,
        as_of=as_of,
        organization_id=organization_id,
        location_ids=location_ids,
        physicians=physicians,
        nurse=nurse,
        staff=(*physicians, nurse, *office),
        resources=tuple(resources),
        limits=load_critical_limits(),
    )


def _display(member: StaffMember) -> str:
    if member.role is Role.physician:
        return f"Dr. {member.given} {member.family}"
    return f"{member.given} {member.family}, RN"


# --- one patient's chart --------------------------------------------------------------------

_PROBLEMS_BY_KEY = {problem.key: problem for problem in v.PROBLEMS}
# (youngest, oldest, weight): roughly the age pyramid of the United States.
_AGE_BANDS = ((0, 17, 22), (18, 34, 22), (35, 49, 19), (50, 64, 19), (65, 79, 13), (80, 95, 5))


def _band(age: int) -> int:
    """Index into ``Problem.prevalence``."""
    return 0 if age < 18 else 1 if age < 45 else 2 if age < 65 else 3


def _instant(day: date, minutes: int) -> str:
    """A dateTime in UTC on ``day``, ``minutes`` after 08:00."""
    hour, minute = divmod(8 * 60 + minutes, 60)
    return f"{day.isoformat()}T{hour:02d}:{minute:02d}:00Z"


def _clip(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February in a year that has none
        return day.replace(year=day.year + years, day=28)


@dataclass
class _Chart:
    """What one patient's generator has decided so far."""

    rng: random.Random
    clinic: Clinic
    patient_id: str
    physician: StaffMember
    age: int
    gender: str
    birth: date
    problems: dict[str, tuple[str, date]] = field(default_factory=dict)  # key -> (id, onset)
    resources: list[DemoResource] = field(default_factory=list)

    def new_id(self) -> str:
        return _new_id(self.rng)

    def add(self, resource: dict[str, Any]) -> str:
        resource_id = self.new_id()
        resource_type = resource["resourceType"]
        body = {"resourceType": resource_type, "id": resource_id, **resource}
        self.resources.append((resource_type, resource_id, body))
        return resource_id

    @property
    def subject(self) -> dict[str, str]:
        return _ref("Patient", self.patient_id)

    @property
    def doctor(self) -> dict[str, str]:
        assert self.physician.practitioner_id is not None
        return _ref("Practitioner", self.physician.practitioner_id, _display(self.physician))

    @property
    def nurse(self) -> dict[str, str]:
        assert self.clinic.nurse.practitioner_id is not None
        return _ref("Practitioner", self.clinic.nurse.practitioner_id, _display(self.clinic.nurse))

    def day_between(self, first: date, last: date) -> date:
        if last <= first:
            return first
        return first + timedelta(days=self.rng.randrange((last - first).days + 1))


def patient_chart(clinic: Clinic, index: int) -> list[DemoResource]:
    """Patient ``index`` (0-based) of the clinic and everything in their chart: CareTeam,
    Encounters with vital signs, Conditions, AllergyIntolerances, MedicationRequests and
    MedicationStatements, lab results with reference ranges, Immunizations."""
    rng = random.Random(f"carechart-demo/{clinic.seed}/patient/{index}")
    physician = clinic.physicians[rng.randrange(len(clinic.physicians))]
    low, high, _ = rng.choices(_AGE_BANDS, weights=[w for *_, w in _AGE_BANDS])[0]
    age = rng.randint(low, high)
    gender = rng.choice(("female", "male"))
    birth = _add_years(clinic.as_of, -age) - timedelta(days=rng.randrange(1, 365))
    chart = _Chart(rng, clinic, _new_id(rng), physician, age, gender, birth)
    chart.resources.append(("Patient", chart.patient_id, _patient(chart, index)))
    _care_team(chart)
    _problems(chart)
    visits = _encounters(chart)
    _vital_signs(chart, visits)
    _labs(chart, visits)
    _medicines(chart, visits)
    _allergies(chart)
    _immunizations(chart)
    return chart.resources


def _patient(chart: _Chart, index: int) -> dict[str, Any]:
    rng = chart.rng
    given_names = v.FEMALE_GIVEN if chart.gender == "female" else v.MALE_GIVEN
    given = rng.sample(given_names, 2 if rng.random() < 0.6 else 1)
    family = rng.choice(v.FAMILY)
    telecom: list[dict[str, Any]] = [
        {"system": "phone", "value": _phone(rng), "use": rng.choice(("home", "mobile"))}
    ]
    if chart.age >= 16:
        local = f"{given[0]}.{family}{rng.randrange(1, 1000)}".lower()
        telecom.append({"system": "email", "value": f"{local}@example.com", "use": "home"})
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": chart.patient_id,
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {
                            "system": IDENTIFIER_TYPE,
                            "code": "MR",
                            "display": "Medical record number",
                        }
                    ],
                    "text": "MRN",
                },
                "system": MRN_SYSTEM,
                "value": f"D{chart.clinic.seed}-{index + 1:07d}",
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": family, "given": given}],
        "telecom": telecom,
        "gender": chart.gender,
        "birthDate": chart.birth.isoformat(),
        "address": [_address(rng, "home")],
    }
    if chart.age >= 18:
        code, display = rng.choices(
            (("M", "Married"), ("S", "Never Married"), ("D", "Divorced"), ("W", "Widowed")),
            weights=(50, 32, 12, 6 if chart.age < 65 else 25),
        )[0]
        patient["maritalStatus"] = {
            "coding": [{"system": MARITAL_STATUS, "code": code, "display": display}],
            "text": display,
        }
    language = ("en-US", "English (United States)") if rng.random() < 0.88 else ("es", "Spanish")
    patient["communication"] = [
        {
            "language": {
                "coding": [
                    {"system": "urn:ietf:bcp:47", "code": language[0], "display": language[1]}
                ],
                "text": language[1],
            },
            "preferred": True,
        }
    ]
    patient["generalPractitioner"] = [chart.doctor]
    patient["managingOrganization"] = _ref(
        "Organization", chart.clinic.organization_id, CLINIC_NAME
    )
    return patient


def _care_team(chart: _Chart) -> None:
    since = max(chart.birth, chart.clinic.as_of - timedelta(days=chart.rng.randrange(30, 3650)))
    chart.add(
        {
            "resourceType": "CareTeam",
            "status": "active",
            "category": [
                {
                    "coding": [
                        {
                            "system": v.LOINC,
                            "code": "LA28865-6",
                            "display": "Longitudinal care-coordination focused care team",
                        }
                    ]
                }
            ],
            "name": "Primary care team",
            "subject": chart.subject,
            "period": {"start": since.isoformat()},
            "participant": [
                {"role": [v.PRIMARY_CARE_PHYSICIAN.concept()], "member": chart.doctor},
                {"role": [v.REGISTERED_NURSE.concept()], "member": chart.nurse},
            ],
            "managingOrganization": [
                _ref("Organization", chart.clinic.organization_id, CLINIC_NAME)
            ],
        }
    )


def _problems(chart: _Chart) -> None:
    """Conditions by age-band prevalence; acute ones were treated at a problem visit."""
    rng, as_of = chart.rng, chart.clinic.as_of
    band = _band(chart.age)
    for problem in v.PROBLEMS:
        excluded_by = v.EXCLUDES.get(problem.key)
        if excluded_by in chart.problems or rng.random() >= problem.prevalence[band]:
            continue
        if problem.chronic:
            if chart.age < 2:
                continue
            earliest = _add_years(chart.birth, 18 if chart.age >= 18 else 1)
            onset = chart.day_between(earliest, as_of - timedelta(days=60))
        else:
            onset = as_of - timedelta(days=rng.randrange(14, 700))
            if onset < chart.birth + timedelta(days=60):
                continue
        condition: dict[str, Any] = {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": CONDITION_CLINICAL,
                        "code": "active" if problem.chronic else "resolved",
                    }
                ]
            },
            "verificationStatus": {
                "coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]
            },
            "category": [
                {
                    "coding": [
                        {
                            "system": CONDITION_CATEGORY,
                            "code": "problem-list-item"
                            if problem.chronic
                            else "encounter-diagnosis",
                        }
                    ]
                }
            ],
            "code": problem.snomed.concept(problem.icd10),
            "subject": chart.subject,
            "onsetDateTime": onset.isoformat(),
            "recordedDate": onset.isoformat(),
            "recorder": chart.doctor,
        }
        if not problem.chronic:
            condition["abatementDateTime"] = (
                onset + timedelta(days=rng.randrange(7, 21))
            ).isoformat()
        chart.problems[problem.key] = (chart.add(condition), onset)


@dataclass(frozen=True, slots=True)
class _Visit:
    id: str
    day: date
    minutes: int  # after 08:00
    check_up: bool


def _encounters(chart: _Chart) -> list[_Visit]:
    """Office visits of the last two years, oldest first: a yearly check-up, follow-ups of
    chronic problems, and one problem visit per recent acute problem."""
    rng, as_of = chart.rng, chart.clinic.as_of
    chronic = [k for k, p in _PROBLEMS_BY_KEY.items() if p.chronic and k in chart.problems]
    acute = [k for k, p in _PROBLEMS_BY_KEY.items() if not p.chronic and k in chart.problems]
    plans: list[tuple[date, v.Code, str | None]] = []
    check_ups = 2 if chart.age < 2 or rng.random() < 0.45 else 1
    for year in range(check_ups):
        plans.append((as_of - timedelta(days=rng.randrange(1, 330) + 365 * year), v.CHECK_UP, None))
    for key in chronic[:2]:
        if rng.random() < 0.6:
            onset = chart.problems[key][1]
            first = max(onset + timedelta(days=14), as_of - timedelta(days=700))
            plans.append((chart.day_between(first, as_of - timedelta(days=1)), v.FOLLOW_UP, key))
    for key in acute:
        plans.append((chart.problems[key][1], v.PROBLEM_VISIT, key))
    plans.sort(key=lambda plan: plan[0])
    visits: list[_Visit] = []
    for day, kind, reason in plans:
        day = max(day, chart.birth)
        minutes = rng.randrange(0, 9 * 60, 15)
        encounter: dict[str, Any] = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
            "type": [kind.concept()],
            "subject": chart.subject,
            "participant": [
                {
                    "type": [
                        {
                            "coding": [
                                {
                                    "system": PARTICIPATION_TYPE,
                                    "code": "PPRF",
                                    "display": "primary performer",
                                }
                            ]
                        }
                    ],
                    "individual": chart.doctor,
                }
            ],
            "period": {"start": _instant(day, minutes), "end": _instant(day, minutes + 20)},
        }
        if reason is not None:
            encounter["reasonReference"] = [_ref("Condition", chart.problems[reason][0])]
        encounter["location"] = [
            {"location": _ref("Location", rng.choice(chart.clinic.location_ids))}
        ]
        encounter["serviceProvider"] = _ref(
            "Organization", chart.clinic.organization_id, CLINIC_NAME
        )
        visits.append(_Visit(chart.add(encounter), day, minutes, kind is v.CHECK_UP))
    return visits


def _quantity(value: Decimal, ucum: str, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": v.UCUM, "code": ucum}


def _category(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": OBSERVATION_CATEGORY, "code": code, "display": display}]}]


def _height_at(adult: float, age: float) -> float:
    """Height in cm at ``age`` years of someone who grows to ``adult`` cm (a rough curve)."""
    if age < 1:
        return 50 + 25 * age
    if age < 2:
        return 75 + 12 * (age - 1)
    if age < 12:
        return 87 + 6.3 * (age - 2)
    return 150 + (adult - 150) * min(1.0, (age - 12) / 5)


def _vital_sign(
    chart: _Chart, visit: _Visit, code: dict[str, Any], **content: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": _category("vital-signs", "Vital Signs"),
        "code": code,
        "subject": chart.subject,
        "encounter": _ref("Encounter", visit.id),
        "effectiveDateTime": _instant(visit.day, visit.minutes + 5),
        "performer": [chart.nurse],
        **content,
    }


def _measured(chart: _Chart, visit: _Visit, vital: v.Vital, value: Decimal) -> None:
    quantity = _quantity(value, vital.ucum, vital.unit)
    chart.add(_vital_sign(chart, visit, vital.code.concept(), valueQuantity=quantity))


def _vital_signs(chart: _Chart, visits: Sequence[_Visit]) -> None:
    """At every visit: blood pressure (85354-9 panel of 8480-6 and 8462-4), heart rate,
    respiratory rate, temperature, oxygen saturation, weight, height and BMI."""
    rng = chart.rng
    hypertensive = "hypertension" in chart.problems
    obese = "obesity" in chart.problems
    adult_height = rng.gauss(176, 7) if chart.gender == "male" else rng.gauss(162, 6.5)
    if chart.age >= 18:
        bmi_base = rng.uniform(30.5, 40) if obese else _clip(rng.gauss(25, 2.6), 18.6, 29.8)
    else:
        bmi_base = _clip(rng.gauss(17, 1.8), 13.5, 22) + (6 if obese else 0)
    for visit in visits:
        years = (visit.day - chart.birth).days / 365.25
        if years >= 3:
            if chart.age >= 18:
                aging = 0.35 * max(0, chart.age - 40)
                systolic = rng.gauss(117 + aging + (16 if hypertensive else 0), 9)
                diastolic = rng.gauss(75 + (9 if hypertensive else 0), 6.5)
            else:
                systolic, diastolic = rng.gauss(98 + years, 7), rng.gauss(60, 6)
            components = [
                {
                    "code": vital.code.concept(),
                    "valueQuantity": _quantity(Decimal(round(value)), vital.ucum, vital.unit),
                }
                for vital, value in ((v.SYSTOLIC, systolic), (v.DIASTOLIC, diastolic))
            ]
            chart.add(_vital_sign(chart, visit, v.BLOOD_PRESSURE.concept(), component=components))
        heart_rate = rng.gauss(74, 8) if years >= 18 else rng.gauss(120 - 3 * years, 9)
        _measured(chart, visit, v.HEART_RATE, Decimal(round(heart_rate)))
        breathing = rng.gauss(16, 1.8) if years >= 18 else rng.gauss(max(14, 30 - 1.2 * years), 2.5)
        _measured(chart, visit, v.RESPIRATORY_RATE, Decimal(round(breathing)))
        temperature = _clip(rng.gauss(36.8, 0.22), 36.0, 37.9)
        _measured(chart, visit, v.BODY_TEMPERATURE, v.decimal_places(temperature, 1))
        saturation = Decimal(round(_clip(rng.gauss(97.6, 1.1), 92, 100)))
        oximetry = v.OXYGEN_SATURATION
        chart.add(
            _vital_sign(
                chart,
                visit,
                oximetry.code.concept(v.OXYGEN_SATURATION_BASE),
                valueQuantity=_quantity(saturation, oximetry.ucum, oximetry.unit),
            )
        )
        height = _height_at(adult_height, years)
        bmi = bmi_base * rng.uniform(0.98, 1.02) if years >= 2 else rng.gauss(16.5, 1)
        weight = bmi * (height / 100) ** 2
        _measured(chart, visit, v.BODY_WEIGHT, v.decimal_places(weight, 1))
        _measured(chart, visit, v.BODY_HEIGHT, v.decimal_places(height, 1))
        if years >= 2:
            _measured(chart, visit, v.BMI, v.decimal_places(weight / (height / 100) ** 2, 1))


def _labs(chart: _Chart, visits: Sequence[_Visit]) -> None:
    """Adults' yearly blood work at their latest check-up: metabolic panel, lipids, blood
    count, and HbA1c for diabetes or prediabetes; flagged against the product's ranges."""
    if chart.age < 18:
        return
    check_ups = [visit for visit in visits if visit.check_up]
    if not check_ups:
        return
    visit = check_ups[-1]
    tests = [*v.METABOLIC_PANEL, *v.BLOOD_COUNT]
    if chart.age >= 35 or chart.problems.keys() & {"hyperlipidemia", "diabetes"}:
        tests += v.LIPID_PANEL
    if chart.problems.keys() & {"diabetes", "prediabetes"}:
        tests.append(v.HBA1C)
    drawn = _instant(visit.day, visit.minutes + 15)
    issued = _instant(visit.day + timedelta(days=1), 60)
    for test in tests:
        limits = chart.clinic.limits[test.loinc]
        mean, sd = test.mean, test.sd
        for key, shifted_mean, shifted_sd in test.shifted:
            if key in chart.problems:
                mean, sd = shifted_mean, shifted_sd
                break
        if test.loinc == "718-7" and chart.gender == "female":
            mean -= 1.2
        value = v.decimal_places(max(chart.rng.gauss(mean, sd), 10.0**-test.places), test.places)
        unit = limits.unit or ""
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final",
            "category": _category("laboratory", "Laboratory"),
            "code": v.Code(v.LOINC, test.loinc, limits.name).concept(),
            "subject": chart.subject,
            "encounter": _ref("Encounter", visit.id),
            "effectiveDateTime": drawn,
            "issued": issued,
            "valueQuantity": _quantity(value, unit, unit),
        }
        flag = numeric_flag(value, unit, None, limits, loinc=test.loinc)
        if flag is not None:
            observation["interpretation"] = [Interpretation(flag, "computed").to_fhir()]
        reference_range: dict[str, Any] = {}
        if limits.normal_low is not None:
            reference_range["low"] = _quantity(limits.normal_low, unit, unit)
        if limits.normal_high is not None:
            reference_range["high"] = _quantity(limits.normal_high, unit, unit)
        if reference_range:
            observation["referenceRange"] = [reference_range]
        chart.add(observation)


def _medicines(chart: _Chart, visits: Sequence[_Visit]) -> None:
    """Prescriptions for problems that have them (active for chronic problems, completed for
    acute ones) and what the patient takes over the counter."""
    rng, as_of = chart.rng, chart.clinic.as_of
    for key, (condition_id, onset) in chart.problems.items():
        problem = _PROBLEMS_BY_KEY[key]
        reason = [_ref("Condition", condition_id)]
        if problem.prescriptions and (not problem.chronic or rng.random() < 0.85):
            medicine = rng.choice(problem.prescriptions)
            authored = (
                onset
                if not problem.chronic
                else chart.day_between(onset, as_of - timedelta(days=1))
            )
            dosage: dict[str, Any] = {"text": medicine.instructions}
            if medicine.oral:
                dosage["route"] = v.ORAL_ROUTE.concept()
            chart.add(
                {
                    "resourceType": "MedicationRequest",
                    "status": "active" if problem.chronic else "completed",
                    "intent": "order",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": REQUEST_CATEGORY,
                                    "code": "community",
                                    "display": "Community",
                                }
                            ]
                        }
                    ],
                    "medicationCodeableConcept": medicine.code.concept(),
                    "subject": chart.subject,
                    "authoredOn": authored.isoformat(),
                    "requester": chart.doctor,
                    "reasonReference": reason,
                    "dosageInstruction": [dosage],
                }
            )
        if problem.self_care and rng.random() < 0.7:
            medicine = rng.choice(problem.self_care)
            asserted = visits[-1].day if visits else as_of
            chart.add(
                {
                    "resourceType": "MedicationStatement",
                    "status": "active" if problem.chronic else "completed",
                    "medicationCodeableConcept": medicine.code.concept(),
                    "subject": chart.subject,
                    "effectivePeriod": {"start": onset.isoformat()},
                    "dateAsserted": asserted.isoformat(),
                    "informationSource": chart.subject,
                    "reasonReference": reason,
                    "dosage": [{"text": medicine.instructions}],
                }
            )
    cardiac_risk = chart.problems.keys() & {"hypertension", "hyperlipidemia", "diabetes"}
    if chart.age >= 50 and cardiac_risk and rng.random() < 0.4:
        chart.add(
            {
                "resourceType": "MedicationStatement",
                "status": "active",
                "medicationCodeableConcept": v.ASPIRIN.code.concept(),
                "subject": chart.subject,
                "dateAsserted": (visits[-1].day if visits else as_of).isoformat(),
                "informationSource": chart.subject,
                "dosage": [{"text": v.ASPIRIN.instructions}],
            }
        )


def _allergies(chart: _Chart) -> None:
    rng = chart.rng
    roll = rng.random()
    count = 0 if roll < 0.78 else 1 if roll < 0.95 else 2
    weights = [allergen.weight for allergen in v.ALLERGENS]
    chosen: list[v.Allergen] = []
    while len(chosen) < count:
        allergen = rng.choices(v.ALLERGENS, weights=weights)[0]
        if allergen not in chosen:
            chosen.append(allergen)
    for allergen in chosen:
        reaction = rng.choice(allergen.reactions)
        severe = reaction is v.ANAPHYLAXIS
        recorded = chart.day_between(chart.birth, chart.clinic.as_of)
        chart.add(
            {
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
                "verificationStatus": {
                    "coding": [{"system": ALLERGY_VERIFICATION, "code": "confirmed"}]
                },
                "type": "intolerance" if reaction is v.NAUSEA else "allergy",
                "category": [allergen.category],
                "criticality": "high" if severe else "low",
                "code": allergen.code.concept(),
                "patient": chart.subject,
                "recordedDate": recorded.isoformat(),
                "recorder": chart.doctor,
                "reaction": [
                    {
                        "manifestation": [reaction.concept()],
                        "severity": "severe" if severe else rng.choice(("mild", "moderate")),
                    }
                ],
            }
        )


def _immunizations(chart: _Chart) -> None:
    """The childhood series for children; influenza, tetanus, pneumococcal and zoster
    vaccines for adults by age."""
    rng, as_of = chart.rng, chart.clinic.as_of
    doses: list[tuple[v.Code, date]] = []
    if chart.age < 18:
        for vaccine, months in v.CHILDHOOD:
            day = chart.birth + timedelta(days=round(months * 30.44))
            if day < as_of and rng.random() < 0.95:
                doses.append((vaccine, day))
    else:
        if rng.random() < 0.5:
            doses.append(
                (
                    v.TD if rng.random() < 0.5 else v.TDAP,
                    as_of - timedelta(days=rng.randrange(30, 3650)),
                )
            )
        if chart.age >= 65 and rng.random() < 0.6:
            doses.append(
                (rng.choice((v.PPSV23, v.PCV13)), as_of - timedelta(days=rng.randrange(30, 2000)))
            )
        if chart.age >= 50 and rng.random() < 0.35:
            doses.append((v.ZOSTER, as_of - timedelta(days=rng.randrange(30, 1500))))
        if chart.age < 60 and rng.random() < 0.05:
            doses.append((v.HEPB_ADULT, as_of - timedelta(days=rng.randrange(30, 3000))))
    if rng.random() < (0.7 if chart.age >= 65 else 0.45):
        season = date(as_of.year - (1 if as_of.month < 9 else 0), 9, 15)
        doses.append((v.INFLUENZA, season + timedelta(days=rng.randrange(0, 75))))
    for vaccine, day in doses:
        immunization: dict[str, Any] = {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": vaccine.concept(),
            "patient": chart.subject,
            "occurrenceDateTime": day.isoformat(),
            "primarySource": True,
            "lotNumber": f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randrange(10_000, 100_000)}",
        }
        if (as_of - day).days < 730:
            immunization["performer"] = [{"actor": chart.nurse}]
        chart.add(immunization)
