"""The demo clinic's small coded tables: names, problems, medicines, allergies, vaccines,
vital signs and lab tests.

Names are common United States names, chosen by hand from public lists:
given names from the Social Security Administration's "Top names over the last 100 years"
(https://www.ssa.gov/oact/babynames/decades/century.html), family names from the Census
Bureau's "Frequently Occurring Surnames from the 2010 Census"
(https://www.census.gov/topics/population/genealogy/data/2010_surnames.html). Combined at
random they name nobody in particular.

Codes are real: SNOMED CT and ICD-10-CM for problems, RxNorm for medicines (clinical drugs
where the demo needs a strength, ingredients otherwise; ingredient RxCUIs checked against
NLM's NDF-RT to RxNorm mapping), CVX for vaccines, LOINC with UCUM units for observations.
Lab names, units and normal ranges come from the product's own table
(:mod:`carechart.labs.critical_limits`, derived from NLM's flowsheet-lhc), so demo results
are flagged exactly as real ones would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True, slots=True)
class Code:
    system: str
    code: str
    display: str

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}

    def concept(self, *more: Code) -> dict[str, Any]:
        """A CodeableConcept with this coding and equivalent ones. No ``text``: the displays
        say the same, and every text is indexed for ``:text`` searches, which costs a demo
        load of 100,000 patients minutes."""
        return {"coding": [c.coding() for c in (self, *more)]}


# --- names ------------------------------------------------------------------------------

FEMALE_GIVEN = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
    "Sarah", "Karen", "Lisa", "Nancy", "Betty", "Sandra", "Margaret", "Ashley", "Kimberly",
    "Emily", "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie",
    "Rebecca", "Sharon", "Laura", "Cynthia", "Dorothy", "Amy", "Kathleen", "Angela",
    "Shirley", "Emma", "Brenda", "Pamela", "Nicole", "Anna", "Samantha",
)  # fmt: skip
MALE_GIVEN = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Christopher", "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven",
    "Andrew", "Paul", "Joshua", "Kenneth", "Kevin", "Brian", "Timothy", "Ronald", "George",
    "Jason", "Edward", "Jeffrey", "Ryan", "Jacob", "Nicholas", "Gary", "Eric", "Jonathan",
    "Stephen", "Larry", "Justin", "Scott", "Brandon",
)  # fmt: skip
FAMILY = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas",
    "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris",
    "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King",
    "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson",
    "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts",
)  # fmt: skip
STREETS = (
    "Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park",
    "Walnut", "Lincoln", "Jefferson", "Sunset", "Highland", "Church", "Spring", "Meadow",
)  # fmt: skip
STREET_SUFFIXES = ("St", "Ave", "Rd", "Ln", "Dr", "Ct")
# The clinic's catchment: Springfield, Illinois, and towns around it; telephone numbers use
# the 555-0100..0199 block, which the North American Numbering Plan keeps fictional.
TOWNS = (
    ("Springfield", "62701"), ("Springfield", "62702"), ("Springfield", "62704"),
    ("Chatham", "62629"), ("Rochester", "62563"), ("Sherman", "62684"), ("Riverton", "62561"),
)  # fmt: skip
STATE = "IL"
AREA_CODE = "217"


# --- problems ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Medicine:
    code: Code
    instructions: str
    oral: bool = True


def _rx(code: str, display: str, instructions: str, *, oral: bool = True) -> Medicine:
    return Medicine(Code(RXNORM, code, display), instructions, oral)


LISINOPRIL = _rx("314076", "lisinopril 10 MG Oral Tablet", "Take 1 tablet by mouth once daily")
AMLODIPINE = _rx("197361", "amlodipine 5 MG Oral Tablet", "Take 1 tablet by mouth once daily")
ATORVASTATIN = _rx("259255", "atorvastatin 80 MG Oral Tablet", "Take 1 tablet by mouth once daily")
SIMVASTATIN = _rx("312961", "simvastatin 20 MG Oral Tablet", "Take 1 tablet by mouth at bedtime")
METFORMIN = _rx(
    "860975",
    "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
    "Take 1 tablet by mouth with the evening meal",
)
ALBUTEROL = _rx(
    "745679",
    "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
    "Inhale 2 puffs every 4 to 6 hours as needed for wheezing",
    oral=False,
)
FLUTICASONE_SALMETEROL = _rx(
    "896209",
    "60 ACTUAT fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT Dry Powder Inhaler",
    "Inhale 1 puff twice daily",
    oral=False,
)
SERTRALINE = _rx("36437", "sertraline", "50 mg by mouth once daily")
LEVOTHYROXINE = _rx("10582", "levothyroxine", "75 mcg by mouth once daily before breakfast")
OMEPRAZOLE = _rx("7646", "omeprazole", "20 mg by mouth once daily before breakfast")
WARFARIN = _rx(
    "855332", "warfarin sodium 5 MG Oral Tablet", "Take as directed by the anticoagulation clinic"
)
DIGOXIN = _rx("197604", "digoxin 0.125 MG Oral Tablet", "Take 1 tablet by mouth once daily")
PENICILLIN_V = _rx(
    "834102",
    "penicillin V potassium 500 MG Oral Tablet",
    "Take 1 tablet by mouth twice daily for 10 days",
)
# Over the counter: recorded as MedicationStatements (what the patient says they take).
IBUPROFEN = _rx("310965", "ibuprofen 200 MG Oral Tablet", "200 to 400 mg by mouth as needed")
NAPROXEN = _rx("849574", "naproxen sodium 220 MG Oral Tablet", "220 mg by mouth as needed")
ACETAMINOPHEN = _rx(
    "313782", "acetaminophen 325 MG Oral Tablet", "650 mg by mouth every 6 hours as needed"
)
ASPIRIN = _rx("1191", "aspirin", "81 mg by mouth once daily")


@dataclass(frozen=True, slots=True)
class Problem:
    """A condition the demo assigns by age: ``prevalence`` per age band (under 18, 18-44,
    45-64, 65 and over). Chronic problems stay active and get ``prescriptions``; acute ones
    are resolved a few weeks after onset. ``self_care``: over-the-counter medicines."""

    key: str
    snomed: Code
    icd10: Code
    prevalence: tuple[float, float, float, float]
    chronic: bool = True
    prescriptions: tuple[Medicine, ...] = ()
    self_care: tuple[Medicine, ...] = ()


def _problem(
    key: str,
    snomed: tuple[str, str],
    icd10: tuple[str, str],
    prevalence: tuple[float, float, float, float],
    **kwargs: Any,
) -> Problem:
    return Problem(key, Code(SNOMED, *snomed), Code(ICD10CM, *icd10), prevalence, **kwargs)


PROBLEMS = (
    _problem(
        "hypertension",
        ("59621000", "Essential hypertension (disorder)"),
        ("I10", "Essential (primary) hypertension"),
        (0.0, 0.06, 0.30, 0.58),
        prescriptions=(LISINOPRIL, AMLODIPINE),
    ),
    _problem(
        "hyperlipidemia",
        ("55822004", "Hyperlipidemia (disorder)"),
        ("E78.5", "Hyperlipidemia, unspecified"),
        (0.0, 0.05, 0.25, 0.45),
        prescriptions=(ATORVASTATIN, SIMVASTATIN),
    ),
    _problem(
        "diabetes",
        ("44054006", "Diabetes mellitus type 2 (disorder)"),
        ("E11.9", "Type 2 diabetes mellitus without complications"),
        (0.0, 0.03, 0.13, 0.25),
        prescriptions=(METFORMIN,),
    ),
    _problem(
        "prediabetes",
        ("15777000", "Prediabetes (finding)"),
        ("R73.03", "Prediabetes"),
        (0.0, 0.10, 0.22, 0.20),
    ),
    _problem(
        "obesity",
        ("414916001", "Obesity (disorder)"),
        ("E66.9", "Obesity, unspecified"),
        (0.12, 0.30, 0.38, 0.32),
    ),
    _problem(
        "asthma",
        ("195967001", "Asthma (disorder)"),
        ("J45.909", "Unspecified asthma, uncomplicated"),
        (0.08, 0.08, 0.08, 0.07),
        prescriptions=(ALBUTEROL, FLUTICASONE_SALMETEROL),
    ),
    _problem(
        "depression",
        ("370143000", "Major depressive disorder (disorder)"),
        ("F32.9", "Major depressive disorder, single episode, unspecified"),
        (0.03, 0.08, 0.08, 0.06),
        prescriptions=(SERTRALINE,),
    ),
    _problem(
        "anxiety",
        ("21897009", "Generalized anxiety disorder (disorder)"),
        ("F41.1", "Generalized anxiety disorder"),
        (0.04, 0.08, 0.07, 0.05),
        prescriptions=(SERTRALINE,),
    ),
    _problem(
        "hypothyroidism",
        ("40930008", "Hypothyroidism (disorder)"),
        ("E03.9", "Hypothyroidism, unspecified"),
        (0.0, 0.03, 0.06, 0.10),
        prescriptions=(LEVOTHYROXINE,),
    ),
    _problem(
        "gerd",
        ("235595009", "Gastroesophageal reflux disease (disorder)"),
        ("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
        (0.01, 0.08, 0.15, 0.20),
        prescriptions=(OMEPRAZOLE,),
    ),
    _problem(
        "atrial_fibrillation",
        ("49436004", "Atrial fibrillation (disorder)"),
        ("I48.91", "Unspecified atrial fibrillation"),
        (0.0, 0.0, 0.02, 0.08),
        prescriptions=(WARFARIN, DIGOXIN),
    ),
    _problem(
        "knee_osteoarthritis",
        ("239873007", "Osteoarthritis of knee (disorder)"),
        ("M17.9", "Osteoarthritis of knee, unspecified"),
        (0.0, 0.01, 0.10, 0.25),
        self_care=(ACETAMINOPHEN, IBUPROFEN),
    ),
    _problem(
        "migraine",
        ("37796009", "Migraine (disorder)"),
        ("G43.909", "Migraine, unspecified, not intractable, without status migrainosus"),
        (0.02, 0.06, 0.05, 0.03),
        self_care=(NAPROXEN, IBUPROFEN),
    ),
    _problem(
        "allergic_rhinitis",
        ("61582004", "Allergic rhinitis (disorder)"),
        ("J30.9", "Allergic rhinitis, unspecified"),
        (0.08, 0.10, 0.08, 0.06),
    ),
    _problem(
        "low_back_pain",
        ("279039007", "Low back pain (finding)"),
        ("M54.50", "Low back pain, unspecified"),
        (0.0, 0.05, 0.08, 0.08),
        self_care=(IBUPROFEN, ACETAMINOPHEN),
    ),
    _problem(
        "pharyngitis",
        ("195662009", "Acute viral pharyngitis (disorder)"),
        ("J02.9", "Acute pharyngitis, unspecified"),
        (0.15, 0.05, 0.03, 0.02),
        chronic=False,
    ),
    _problem(
        "strep_throat",
        ("43878008", "Streptococcal sore throat (disorder)"),
        ("J02.0", "Streptococcal pharyngitis"),
        (0.06, 0.02, 0.01, 0.01),
        chronic=False,
        prescriptions=(PENICILLIN_V,),
    ),
    _problem(
        "bronchitis",
        ("10509002", "Acute bronchitis (disorder)"),
        ("J20.9", "Acute bronchitis, unspecified"),
        (0.05, 0.05, 0.05, 0.05),
        chronic=False,
        self_care=(ACETAMINOPHEN,),
    ),
    _problem(
        "sinusitis",
        ("444814009", "Viral sinusitis (disorder)"),
        ("J01.90", "Acute sinusitis, unspecified"),
        (0.08, 0.08, 0.08, 0.06),
        chronic=False,
    ),
)
# Problems that exclude each other (a diabetic is not also "prediabetic").
EXCLUDES = {"prediabetes": "diabetes"}


# --- allergies --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allergen:
    code: Code
    category: str  # AllergyIntolerance.category: food | medication | environment | biologic
    reactions: tuple[Code, ...]
    weight: int


RASH = Code(SNOMED, "271807003", "Eruption of skin (disorder)")
HIVES = Code(SNOMED, "247472004", "Wheal (finding)")
ANAPHYLAXIS = Code(SNOMED, "39579001", "Anaphylaxis (disorder)")
NAUSEA = Code(SNOMED, "422587007", "Nausea (finding)")
SNEEZING = Code(SNOMED, "76067001", "Sneezing (finding)")
ITCHING = Code(SNOMED, "418290006", "Itching (finding)")

ALLERGENS = (
    Allergen(Code(RXNORM, "70618", "Penicillin"), "medication", (RASH, HIVES, ANAPHYLAXIS), 10),
    Allergen(Code(RXNORM, "10180", "Sulfamethoxazole"), "medication", (RASH, HIVES), 5),
    Allergen(Code(RXNORM, "2670", "Codeine"), "medication", (NAUSEA, ITCHING), 4),
    Allergen(Code(RXNORM, "1191", "Aspirin"), "medication", (HIVES,), 2),
    Allergen(Code(RXNORM, "723", "Amoxicillin"), "medication", (RASH, HIVES), 3),
    Allergen(Code(RXNORM, "5640", "Ibuprofen"), "medication", (HIVES, RASH), 2),
    Allergen(
        Code(SNOMED, "91935009", "Allergy to peanuts (finding)"), "food", (HIVES, ANAPHYLAXIS), 4
    ),
    Allergen(
        Code(SNOMED, "300913006", "Shellfish allergy (finding)"), "food", (HIVES, ANAPHYLAXIS), 3
    ),
    Allergen(Code(SNOMED, "91930004", "Allergy to eggs (finding)"), "food", (RASH, NAUSEA), 2),
    Allergen(Code(SNOMED, "300916003", "Latex allergy (finding)"), "environment", (RASH,), 2),
    Allergen(
        Code(SNOMED, "424213003", "Allergy to bee venom (finding)"),
        "environment",
        (HIVES, ANAPHYLAXIS),
        2,
    ),
    Allergen(
        Code(SNOMED, "232350006", "House dust mite allergy (finding)"),
        "environment",
        (SNEEZING, ITCHING),
        4,
    ),
    Allergen(
        Code(SNOMED, "418689008", "Allergy to grass pollen (finding)"),
        "environment",
        (SNEEZING, ITCHING),
        4,
    ),
)


# --- vaccines ---------------------------------------------------------------------------


def _cvx(code: str, display: str) -> Code:
    return Code(CVX, code, display)


INFLUENZA = _cvx("140", "Influenza, seasonal, injectable, preservative free")
TD = _cvx("113", "Td (adult) preservative free")
TDAP = _cvx("115", "Tdap")
PPSV23 = _cvx("33", "pneumococcal polysaccharide vaccine, 23 valent")
PCV13 = _cvx("133", "Pneumococcal conjugate PCV 13")
ZOSTER = _cvx("187", "zoster vaccine recombinant")
HEPB_ADULT = _cvx("43", "Hep B, adult")
# Childhood series: (vaccine, age in months at the dose).
CHILDHOOD = (
    (_cvx("08", "Hep B, adolescent or pediatric"), 0),
    (_cvx("20", "DTaP"), 2),
    (_cvx("10", "IPV"), 2),
    (_cvx("20", "DTaP"), 4),
    (_cvx("10", "IPV"), 4),
    (_cvx("03", "MMR"), 12),
    (_cvx("21", "varicella"), 12),
    (_cvx("83", "Hep A, ped/adol, 2 dose"), 12),
    (_cvx("03", "MMR"), 48),
    (_cvx("21", "varicella"), 48),
    (_cvx("114", "meningococcal MCV4P"), 132),
    (TDAP, 132),
)


# --- vital signs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Vital:
    code: Code
    ucum: str
    unit: str


BLOOD_PRESSURE = Code(LOINC, "85354-9", "Blood pressure panel with all children optional")
SYSTOLIC = Vital(Code(LOINC, "8480-6", "Systolic blood pressure"), "mm[Hg]", "mmHg")
DIASTOLIC = Vital(Code(LOINC, "8462-4", "Diastolic blood pressure"), "mm[Hg]", "mmHg")
HEART_RATE = Vital(Code(LOINC, "8867-4", "Heart rate"), "/min", "beats/minute")
RESPIRATORY_RATE = Vital(Code(LOINC, "9279-1", "Respiratory rate"), "/min", "breaths/minute")
BODY_TEMPERATURE = Vital(Code(LOINC, "8310-5", "Body temperature"), "Cel", "C")
# The R4 vital signs profile codes oxygen saturation 2708-6 with 59408-5 (by pulse oximetry).
OXYGEN_SATURATION = Vital(
    Code(LOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"), "%", "%"
)
OXYGEN_SATURATION_BASE = Code(LOINC, "2708-6", "Oxygen saturation in Arterial blood")
BODY_WEIGHT = Vital(Code(LOINC, "29463-7", "Body weight"), "kg", "kg")
BODY_HEIGHT = Vital(Code(LOINC, "8302-2", "Body height"), "cm", "cm")
BMI = Vital(Code(LOINC, "39156-5", "Body mass index (BMI) [Ratio]"), "kg/m2", "kg/m2")


# --- laboratory ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabTest:
    """A test drawn around ``mean`` with spread ``sd`` (in the lab table's unit), rounded to
    ``places`` decimals; ``shifted``: (problem key, mean, sd) for patients with it."""

    loinc: str
    mean: float
    sd: float
    places: int
    shifted: tuple[tuple[str, float, float], ...] = ()


METABOLIC_PANEL = (
    LabTest("2345-7", 92, 10, 0, (("diabetes", 150, 35), ("prediabetes", 108, 8))),
    LabTest("2951-2", 140, 2.2, 0),
    LabTest("2823-3", 4.3, 0.4, 1),
    LabTest("2075-0", 102, 2.5, 0),
    LabTest("3094-0", 14, 4, 0),
    LabTest("2160-0", 0.95, 0.2, 2),
)
LIPID_PANEL = (
    LabTest("2093-3", 185, 30, 0, (("hyperlipidemia", 235, 30),)),
    LabTest("2085-9", 54, 12, 0),
    LabTest("13457-7", 105, 25, 0, (("hyperlipidemia", 150, 25),)),
    LabTest("2571-8", 125, 45, 0, (("hyperlipidemia", 190, 60), ("diabetes", 180, 60))),
)
BLOOD_COUNT = (
    LabTest("718-7", 13.9, 1.3, 1),
    LabTest("26464-8", 7.0, 1.7, 1),
)
HBA1C = LabTest("4548-4", 5.4, 0.3, 1, (("diabetes", 7.4, 1.0), ("prediabetes", 6.0, 0.2)))


def decimal_places(value: float, places: int) -> Decimal:
    """A FHIR decimal with exactly ``places`` digits after the point (1.50 stays 1.50)."""
    return Decimal(f"{value:.{places}f}")


# --- encounters and roles ---------------------------------------------------------------

CHECK_UP = Code(SNOMED, "185349003", "Encounter for check up (procedure)")
FOLLOW_UP = Code(SNOMED, "390906007", "Follow-up encounter (procedure)")
PROBLEM_VISIT = Code(SNOMED, "185347001", "Encounter for problem (procedure)")
FAMILY_PRACTICE = Code(SNOMED, "419772000", "Family practice (qualifier value)")
PRIMARY_CARE_PHYSICIAN = Code(SNOMED, "446050000", "Primary care physician (occupation)")
REGISTERED_NURSE = Code(SNOMED, "224535009", "Registered nurse (occupation)")
ORAL_ROUTE = Code(SNOMED, "26643006", "Oral route (qualifier value)")
