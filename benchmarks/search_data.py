"""Deterministic synthetic data for the search benchmark (``bench_search.py``).

Patients with realistic US names (ranked lists of common family and given names, drawn with a
Zipf-like skew so that "Smith" is ~100x more common than the 200th name), MRN identifiers
``http://hospital.example/mrn|MRN-000123``, birth dates 1930-2020, gender, phone, address;
Observations with LOINC vital signs and labs (UCUM quantities, a blood-pressure panel 85354-9
with 8480-6/8462-4 components), effectiveDateTime over 5 years (2021-2025), each one's subject
a Patient. One "heavy" patient (index 0) has ~300 resources: observations plus Encounters and
Conditions.

Everything is a pure function of (seed, patient index), so any chunk of patients can be
generated independently (in any process) and gives the same data: ``patient_chunk(seed, lo,
hi, obs_per_patient)`` yields Bundle entries for patients ``lo..hi-1`` and their resources.
Patient ids are assigned by the generator (``pat-000123``, PUT entries); other resources are
POSTed (server-assigned ids) and reference ``Patient/pat-000123``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MRN_SYSTEM = "http://hospital.example/mrn"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
HEAVY_INDEX = 0
#: Zipf exponent of family-name frequency: with ~580 names, Smith ~3%, the 500th ~0.07%.
FAMILY_SKEW = 0.6
HEAVY_OBSERVATIONS = 270
HEAVY_ENCOUNTERS = 15
HEAVY_CONDITIONS = 14
#: Observations' effective dates: 5 years.
OBS_START = datetime(2021, 1, 1, tzinfo=UTC)
OBS_SPAN_SECONDS = 5 * 365 * 86400

# Ranked by frequency (US Census 2010 surnames, roughly in order).
FAMILY_NAMES = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Gomez",
    "Phillips",
    "Evans",
    "Turner",
    "Diaz",
    "Parker",
    "Cruz",
    "Edwards",
    "Collins",
    "Reyes",
    "Stewart",
    "Morris",
    "Morales",
    "Murphy",
    "Cook",
    "Rogers",
    "Gutierrez",
    "Ortiz",
    "Morgan",
    "Cooper",
    "Peterson",
    "Bailey",
    "Reed",
    "Kelly",
    "Howard",
    "Ramos",
    "Kim",
    "Cox",
    "Ward",
    "Richardson",
    "Watson",
    "Brooks",
    "Chavez",
    "Wood",
    "James",
    "Bennett",
    "Gray",
    "Mendoza",
    "Ruiz",
    "Hughes",
    "Price",
    "Alvarez",
    "Castillo",
    "Sanders",
    "Patel",
    "Myers",
    "Long",
    "Ross",
    "Foster",
    "Jimenez",
    "Powell",
    "Jenkins",
    "Perry",
    "Russell",
    "Sullivan",
    "Bell",
    "Coleman",
    "Butler",
    "Henderson",
    "Barnes",
    "Gonzales",
    "Fisher",
    "Vasquez",
    "Simmons",
    "Romero",
    "Jordan",
    "Patterson",
    "Alexander",
    "Hamilton",
    "Graham",
    "Reynolds",
    "Griffin",
    "Wallace",
    "Moreno",
    "West",
    "Cole",
    "Hayes",
    "Bryant",
    "Herrera",
    "Gibson",
    "Ellis",
    "Tran",
    "Medina",
    "Aguilar",
    "Stevens",
    "Murray",
    "Ford",
    "Castro",
    "Marshall",
    "Owens",
    "Harrison",
    "Fernandez",
    "McDonald",
    "Woods",
    "Washington",
    "Kennedy",
    "Wells",
    "Vargas",
    "Henry",
    "Chen",
    "Freeman",
    "Webb",
    "Tucker",
    "Guzman",
    "Burns",
    "Crawford",
    "Olson",
    "Simpson",
    "Porter",
    "Hunter",
    "Gordon",
    "Mendez",
    "Silva",
    "Shaw",
    "Snyder",
    "Mason",
    "Dixon",
    "Munoz",
    "Hunt",
    "Hicks",
    "Holmes",
    "Palmer",
    "Wagner",
    "Black",
    "Robertson",
    "Boyd",
    "Rose",
    "Stone",
    "Salazar",
    "Fox",
    "Warren",
    "Mills",
    "Meyer",
    "Rice",
    "Schmidt",
    "Garza",
    "Daniels",
    "Ferguson",
    "Nichols",
    "Stephens",
    "Soto",
    "Weaver",
    "Ryan",
    "Gardner",
    "Payne",
    "Grant",
    "Dunn",
    "Kelley",
    "Spencer",
    "Hawkins",
    "Arnold",
    "Pierce",
    "Vazquez",
    "Hansen",
    "Peters",
    "Santos",
    "Hart",
    "Bradley",
    "Knight",
    "Elliott",
    "Cunningham",
    "Duncan",
    "Armstrong",
    "Hudson",
    "Carroll",
    "Lane",
    "Riley",
    "Andrews",
    "Alvarado",
    "Ray",
    "Delgado",
    "Berry",
    "Perkins",
    "Hoffman",
    "Johnston",
    "Matthews",
    "Pena",
    "Richards",
    "Contreras",
    "Willis",
    "Carpenter",
    "Lawrence",
    "Sandoval",
    "Guerrero",
    "George",
    "Chapman",
    "Rios",
    "Estrada",
    "Ortega",
    "Watkins",
    "Greene",
    "Nunez",
    "Wheeler",
    "Valdez",
    "Harper",
    "Burke",
    "Larson",
    "Santiago",
    "Maldonado",
    "Morrison",
    "Franklin",
    "Carlson",
    "Austin",
    "Dominguez",
    "Carr",
    "Lawson",
    "Jacobs",
    "O'Brien",
    "Lynch",
    "Singh",
    "Vega",
    "Bishop",
    "Montgomery",
    "Oliver",
    "Jensen",
    "Harvey",
    "Williamson",
    "Gilbert",
    "Dean",
    "Sims",
    "Espinoza",
    "Howell",
    "Li",
    "Wong",
    "Reid",
    "Hanson",
    "Le",
    "McCoy",
    "Garrett",
    "Burton",
    "Fuller",
    "Wang",
    "Weber",
    "Welch",
    "Rojas",
    "Lucas",
    "Marquez",
    "Fields",
    "Park",
    "Yang",
    "Little",
    "Banks",
    "Padilla",
    "Day",
    "Walsh",
    "Bowman",
    "Schultz",
    "Luna",
    "Fowler",
    "Mejia",
    "Davidson",
    "Acosta",
    "Brewer",
    "May",
    "Holland",
    "Juarez",
    "Newman",
    "Pearson",
    "Curtis",
    "Cortez",
    "Douglas",
    "Schneider",
    "Joseph",
    "Barrett",
    "Navarro",
    "Figueroa",
    "Keller",
    "Avila",
    "Wade",
    "Molina",
    "Stanley",
    "Hopkins",
    "Campos",
    "Barnett",
    "Bates",
    "Chambers",
    "Caldwell",
    "Beck",
    "Lambert",
    "Miranda",
    "Byrd",
    "Craig",
    "Ayala",
    "Lowe",
    "Frazier",
    "Powers",
    "Neal",
    "Leonard",
    "Gregory",
    "Carrillo",
    "Sutton",
    "Fleming",
    "Rhodes",
    "Shelton",
    "Schwartz",
    "Norris",
    "Jennings",
    "Watts",
    "Duran",
    "Walters",
    "Cohen",
    "McDaniel",
    "Moran",
    "Parks",
    "Steele",
    "Vaughn",
    "Becker",
    "Holt",
    "DeLeon",
    "Barker",
    "Terry",
    "Hale",
    "Leon",
    "Hail",
    "Benson",
    "Haynes",
    "Horton",
    "Miles",
    "Lyons",
    "Pham",
    "Graves",
    "Bush",
    "Thornton",
    "Wolfe",
    "Warner",
    "Cabrera",
    "McKinney",
    "Mann",
    "Zimmerman",
    "Dawson",
    "Lara",
    "Fletcher",
    "Page",
    "McCarthy",
    "Love",
    "Robles",
    "Cervantes",
    "Solis",
    "Erickson",
    "Reeves",
    "Chang",
    "Klein",
    "Salinas",
    "Fuentes",
    "Baldwin",
    "Daniel",
    "Simon",
    "Velasquez",
    "Hardy",
    "Higgins",
    "Aguirre",
    "Lin",
    "Cummings",
    "Chandler",
    "Sharp",
    "Barber",
    "Bowen",
    "Ochoa",
    "Dennis",
    "Robbins",
    "Liu",
    "Ramsey",
    "Francis",
    "Griffith",
    "Paul",
    "Blair",
    "O'Connor",
    "Cardenas",
    "Pacheco",
    "Cross",
    "Calderon",
    "Quinn",
    "Moss",
    "Swanson",
    "Chan",
    "Rivas",
    "Khan",
    "Rodgers",
    "Serrano",
    "Fitzgerald",
    "Rosales",
    "Stevenson",
    "Christensen",
    "Manning",
    "Gill",
    "Curry",
    "McLaughlin",
    "Harmon",
    "McGee",
    "Gross",
    "Doyle",
    "Garner",
    "Newton",
    "Burgess",
    "Reese",
    "Walton",
    "Blake",
    "Trujillo",
    "Adkins",
    "Brady",
    "Goodman",
    "Roman",
    "Webster",
    "Goodwin",
    "Fischer",
    "Huang",
    "Potter",
    "Delacruz",
    "Montoya",
    "Todd",
    "Wu",
    "Hines",
    "Mullins",
    "Castaneda",
    "Malone",
    "Cannon",
    "Tate",
    "Mack",
    "Sherman",
    "Hubbard",
    "Hodges",
    "Zhang",
    "Guerra",
    "Wolf",
    "Valencia",
    "Saunders",
    "Franco",
    "Rowe",
    "Gallagher",
    "Farmer",
    "Hammond",
    "Hampton",
    "Townsend",
    "Ingram",
    "Wise",
    "Gallegos",
    "Clarke",
    "Barton",
    "Schroeder",
    "Maxwell",
    "Waters",
    "Logan",
    "Camacho",
    "Strickland",
    "Norman",
    "Person",
    "Colon",
    "Parsons",
    "Frank",
    "Harrington",
    "Glover",
    "Osborne",
    "Buchanan",
    "Casey",
    "Floyd",
    "Patton",
    "Ibarra",
    "Ball",
    "Tyler",
    "Suarez",
    "Bowers",
    "Orozco",
    "Salas",
    "Cobb",
    "Gibbs",
    "Andrade",
    "Bauer",
    "Conner",
    "Moody",
    "Escobar",
    "McGuire",
    "Lloyd",
    "Mueller",
    "Hartman",
    "French",
    "Kramer",
    "McBride",
    "Pope",
    "Lindsey",
    "Velazquez",
    "Norton",
    "McCormick",
    "Sparks",
    "Flynn",
    "Yates",
    "Hogan",
    "Marsh",
    "Macias",
    "Villanueva",
    "Zamora",
    "Pratt",
    "Stokes",
    "Owen",
    "Ballard",
    "Lang",
    "Brock",
    "Villarreal",
    "Charles",
    "Drake",
    "Barrera",
    "Cain",
    "Patrick",
    "Pineda",
    "Burnett",
    "Mercado",
    "Santana",
    "Shepherd",
    "Bautista",
    "Ali",
    "Shaffer",
    "Lamb",
    "Trevino",
    "McKenzie",
    "Hess",
    "Beil",
    "Olsen",
    "Cochran",
    "Morton",
    "Nash",
    "Wilkins",
    "Petersen",
    "Briggs",
    "Shah",
    "Roth",
    "Nicholson",
    "Holloway",
    "Lozano",
    "Flowers",
    "Rangel",
    "Hoover",
    "Arias",
]

MALE_GIVEN = [
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "Richard",
    "Joseph",
    "Thomas",
    "Christopher",
    "Charles",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
    "Steven",
    "Andrew",
    "Paul",
    "Joshua",
    "Kenneth",
    "Kevin",
    "Brian",
    "George",
    "Timothy",
    "Ronald",
    "Jason",
    "Edward",
    "Jeffrey",
    "Ryan",
    "Jacob",
    "Gary",
    "Nicholas",
    "Eric",
    "Jonathan",
    "Stephen",
    "Larry",
    "Justin",
    "Scott",
    "Brandon",
    "Benjamin",
    "Samuel",
    "Gregory",
    "Alexander",
    "Patrick",
    "Frank",
    "Raymond",
    "Jack",
    "Dennis",
    "Jerry",
    "Tyler",
    "Aaron",
    "Jose",
    "Adam",
    "Nathan",
    "Henry",
    "Zachary",
    "Douglas",
    "Peter",
    "Kyle",
    "Noah",
    "Ethan",
    "Jeremy",
    "Walter",
    "Christian",
    "Keith",
    "Roger",
    "Terry",
    "Austin",
    "Sean",
    "Gerald",
    "Carl",
    "Harold",
    "Dylan",
    "Arthur",
    "Lawrence",
    "Jordan",
    "Jesse",
    "Bryan",
    "Billy",
    "Bruce",
    "Gabriel",
    "Joe",
    "Logan",
    "Alan",
    "Juan",
    "Albert",
    "Willie",
    "Elijah",
    "Wayne",
    "Randy",
    "Vincent",
    "Mason",
    "Roy",
    "Ralph",
    "Bobby",
    "Russell",
    "Bradley",
    "Philip",
    "Eugene",
    "Liam",
    "Oliver",
    "Lucas",
    "Luis",
    "Carlos",
    "Miguel",
    "Ahmed",
    "Wei",
    "Hiroshi",
]

FEMALE_GIVEN = [
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Sandra",
    "Margaret",
    "Ashley",
    "Kimberly",
    "Emily",
    "Donna",
    "Michelle",
    "Carol",
    "Amanda",
    "Melissa",
    "Deborah",
    "Stephanie",
    "Dorothy",
    "Rebecca",
    "Sharon",
    "Laura",
    "Cynthia",
    "Amy",
    "Kathleen",
    "Angela",
    "Shirley",
    "Brenda",
    "Emma",
    "Anna",
    "Pamela",
    "Nicole",
    "Samantha",
    "Katherine",
    "Christine",
    "Helen",
    "Debra",
    "Rachel",
    "Carolyn",
    "Janet",
    "Maria",
    "Catherine",
    "Heather",
    "Diane",
    "Olivia",
    "Julie",
    "Joyce",
    "Victoria",
    "Ruth",
    "Virginia",
    "Lauren",
    "Kelly",
    "Christina",
    "Joan",
    "Evelyn",
    "Judith",
    "Andrea",
    "Hannah",
    "Megan",
    "Cheryl",
    "Jacqueline",
    "Martha",
    "Madison",
    "Teresa",
    "Gloria",
    "Sara",
    "Janice",
    "Ann",
    "Kathryn",
    "Abigail",
    "Sophia",
    "Frances",
    "Jean",
    "Alice",
    "Judy",
    "Isabella",
    "Julia",
    "Grace",
    "Amber",
    "Denise",
    "Danielle",
    "Marilyn",
    "Beverly",
    "Charlotte",
    "Natalie",
    "Theresa",
    "Diana",
    "Brittany",
    "Doris",
    "Kayla",
    "Alexis",
    "Lori",
    "Marie",
    "Ava",
    "Mia",
    "Chloe",
]

CITIES = [
    ("Boston", "MA", "021"), ("Springfield", "IL", "627"), ("Columbus", "OH", "432"),
    ("Austin", "TX", "787"), ("Denver", "CO", "802"), ("Portland", "OR", "972"),
    ("Madison", "WI", "537"), ("Raleigh", "NC", "276"), ("Tucson", "AZ", "857"),
    ("Albany", "NY", "122"), ("Richmond", "VA", "232"), ("Omaha", "NE", "681"),
]  # fmt: skip
STREETS = ["Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park"]
STREET_KINDS = ["St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Ct"]


def _zipf_weights(n: int, s: float = 1.0) -> list[float]:
    return [1.0 / (rank + 1) ** s for rank in range(n)]


_FAMILY_CUM = None
_MALE_CUM = None
_FEMALE_CUM = None


def _cum(weights: list[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def _tables() -> tuple[list[float], list[float], list[float]]:
    global _FAMILY_CUM, _MALE_CUM, _FEMALE_CUM
    if _FAMILY_CUM is None:
        _FAMILY_CUM = _cum(_zipf_weights(len(FAMILY_NAMES), FAMILY_SKEW))
        _MALE_CUM = _cum(_zipf_weights(len(MALE_GIVEN), 0.6))
        _FEMALE_CUM = _cum(_zipf_weights(len(FEMALE_GIVEN), 0.6))
    assert _MALE_CUM is not None
    assert _FEMALE_CUM is not None
    return _FAMILY_CUM, _MALE_CUM, _FEMALE_CUM


def family_weights() -> dict[str, float]:
    """Share of patients with each family name (first name of ``FAMILY_NAMES`` most common)."""
    weights = _zipf_weights(len(FAMILY_NAMES), FAMILY_SKEW)
    total = sum(weights)
    return {name: w / total for name, w in zip(FAMILY_NAMES, weights, strict=True)}


def _rng(seed: int, index: int, salt: int = 0) -> random.Random:
    return random.Random(seed * 1_000_003 + index * 7 + salt)


def patient_id(index: int) -> str:
    return f"pat-{index:07d}"


def mrn(index: int) -> str:
    return f"MRN-{index:06d}"


@dataclass(frozen=True, slots=True)
class PatientFacts:
    index: int
    id: str
    mrn: str
    family: str
    given: str
    gender: str
    birth_date: str
    observations: int


def patient_facts(seed: int, index: int, obs_per_patient: float) -> PatientFacts:
    """The searchable facts of patient ``index`` (a pure function of seed and index)."""
    rng = _rng(seed, index)
    fam_cum, male_cum, female_cum = _tables()
    family = rng.choices(FAMILY_NAMES, cum_weights=fam_cum)[0]
    gender = "male" if rng.random() < 0.49 else "female"
    given = rng.choices(
        MALE_GIVEN if gender == "male" else FEMALE_GIVEN,
        cum_weights=male_cum if gender == "male" else female_cum,
    )[0]
    start = datetime(1930, 1, 1)
    birth = start + timedelta(days=rng.randrange((datetime(2020, 12, 31) - start).days))
    # Observations per patient: a skewed (geometric-like) count with the wanted mean.
    if index == HEAVY_INDEX:
        n_obs = HEAVY_OBSERVATIONS
    else:
        n_obs = int(rng.expovariate(1.0 / obs_per_patient) + 0.5) if obs_per_patient > 0 else 0
    return PatientFacts(
        index, patient_id(index), mrn(index), family, given, gender, birth.date().isoformat(), n_obs
    )


def patient_resource(seed: int, facts: PatientFacts) -> dict[str, Any]:
    rng = _rng(seed, facts.index, 1)
    city, state, zip3 = rng.choice(CITIES)
    middle = rng.choice(MALE_GIVEN if facts.gender == "male" else FEMALE_GIVEN)
    return {
        "resourceType": "Patient",
        "id": facts.id,
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": MRN_SYSTEM,
                "value": facts.mrn,
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": facts.family, "given": [facts.given, middle]}],
        "telecom": [
            {
                "system": "phone",
                "value": f"({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}",
                "use": rng.choice(["home", "mobile"]),
            }
        ],
        "gender": facts.gender,
        "birthDate": facts.birth_date,
        "address": [
            {
                "use": "home",
                "line": [
                    f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(STREET_KINDS)}"
                ],
                "city": city,
                "state": state,
                "postalCode": f"{zip3}{rng.randint(0, 99):02d}",
                "country": "US",
            }
        ],
    }


# (code, display, unit code, unit, low, high, decimals, category)
SIMPLE_OBS = [
    ("8867-4", "Heart rate", "/min", "beats/minute", 50, 120, 0, "vital-signs"),
    ("29463-7", "Body weight", "kg", "kg", 3, 140, 1, "vital-signs"),
    ("8302-2", "Body height", "cm", "cm", 50, 200, 1, "vital-signs"),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", "kg/m2", 15, 45, 1, "vital-signs"),
    ("8310-5", "Body temperature", "Cel", "Cel", 35.5, 39.5, 1, "vital-signs"),
    ("9279-1", "Respiratory rate", "/min", "breaths/minute", 10, 28, 0, "vital-signs"),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", "%", 88, 100, 0,
     "vital-signs"),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L", 3.0, 5.8, 1,
     "laboratory"),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 60, 250, 0,
     "laboratory"),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L", 130, 150, 0,
     "laboratory"),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 0.5, 2.5, 2,
     "laboratory"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/dL", 9, 18, 1, "laboratory"),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "%", 4.5, 11, 1, "laboratory"),
]  # fmt: skip
#: Relative frequency of each simple observation, plus the BP panel (last).
OBS_WEIGHTS = [16, 8, 3, 4, 4, 6, 6, 6, 8, 5, 4, 4, 3, 16]


def _quantity(value: float, code: str, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def _category(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": OBS_CATEGORY, "code": code}]}]


def observation(rng: random.Random, subject: str, encounter: str | None = None) -> dict[str, Any]:
    kind = rng.choices(range(len(OBS_WEIGHTS)), weights=OBS_WEIGHTS)[0]
    when = OBS_START + timedelta(seconds=rng.randrange(OBS_SPAN_SECONDS))
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": subject},
        "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
        "issued": (when + timedelta(minutes=rng.randint(5, 240)))
        .isoformat()
        .replace("+00:00", "Z"),
    }
    if encounter:
        base["encounter"] = {"reference": encounter}
    if kind == len(SIMPLE_OBS):  # blood pressure panel
        systolic = rng.randint(95, 175)
        diastolic = rng.randint(55, min(systolic - 20, 110))
        base["category"] = _category("vital-signs")
        base["code"] = {
            "coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}],
            "text": "Blood pressure",
        }
        base["component"] = [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
                "valueQuantity": _quantity(systolic, "mm[Hg]", "mmHg"),
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic"}]},
                "valueQuantity": _quantity(diastolic, "mm[Hg]", "mmHg"),
            },
        ]
        return base
    code, display, ucum, unit, low, high, decimals, category = SIMPLE_OBS[kind]
    value = round(rng.uniform(low, high), decimals)
    if decimals == 0:
        value = int(value)
    base["category"] = _category(category)
    base["code"] = {
        "coding": [{"system": LOINC, "code": code, "display": display}],
        "text": display,
    }
    base["valueQuantity"] = _quantity(value, ucum, unit)
    return base


CONDITIONS = [
    ("44054006", "Diabetes mellitus type 2"), ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"), ("55822004", "Hyperlipidemia"), ("13645005", "COPD"),
    ("49436004", "Atrial fibrillation"), ("35489007", "Depressive disorder"),
]  # fmt: skip


def heavy_extras(seed: int, subject: str) -> list[dict[str, Any]]:
    """Encounters and Conditions of the heavy patient (Observations come separately)."""
    rng = _rng(seed, HEAVY_INDEX, 2)
    out: list[dict[str, Any]] = []
    for k in range(HEAVY_ENCOUNTERS):
        start = OBS_START + timedelta(seconds=rng.randrange(OBS_SPAN_SECONDS))
        out.append(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "type": [{"text": f"Outpatient visit {k + 1}"}],
                "subject": {"reference": subject},
                "period": {
                    "start": start.isoformat().replace("+00:00", "Z"),
                    "end": (start + timedelta(minutes=40)).isoformat().replace("+00:00", "Z"),
                },
            }
        )
    for k in range(HEAVY_CONDITIONS):
        code, display = CONDITIONS[k % len(CONDITIONS)]
        onset = OBS_START + timedelta(seconds=rng.randrange(OBS_SPAN_SECONDS))
        out.append(
            {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {
                    "coding": [
                        {"system": "http://snomed.info/sct", "code": code, "display": display}
                    ]
                },
                "subject": {"reference": subject},
                "onsetDateTime": onset.isoformat().replace("+00:00", "Z"),
            }
        )
    return out


#: Observations of each patient loaded in the first pass (with the Patient).
FIRST_PASS_OBS = 3


def patient_entries(
    seed: int, index: int, obs_per_patient: float, part: int = 0
) -> list[dict[str, Any]]:
    """Transaction entries for one patient (PUT, own id) and all its resources (POST).

    ``part`` 0: everything; 1: the Patient, its first :data:`FIRST_PASS_OBS` Observations
    (the heavy patient: all its resources); 2: the remaining Observations only. Loading every
    patient's part 1 before any part 2 makes a time-limited load reach all patients first."""
    facts = patient_facts(seed, index, obs_per_patient)
    subject = f"Patient/{facts.id}"
    entries = [
        {
            "fullUrl": f"http://hospital.example/fhir/{subject}",
            "resource": patient_resource(seed, facts),
            "request": {"method": "PUT", "url": subject},
        }
    ]
    rng = _rng(seed, index, 3)
    others = [observation(rng, subject) for _ in range(facts.observations)]
    if index == HEAVY_INDEX:
        others += heavy_extras(seed, subject)
        if part == 2:
            return []
    elif part == 1:
        others = others[:FIRST_PASS_OBS]
    elif part == 2:
        entries, others = [], others[FIRST_PASS_OBS:]
    entries += [
        {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in others
    ]
    return entries


def bundles(
    seed: int, lo: int, hi: int, obs_per_patient: float, size: int = 500, part: int = 0
) -> Iterator[tuple[dict[str, Any], int, int]]:
    """Transaction Bundles of ~``size`` entries for patients ``lo..hi-1`` (a patient is never
    split across Bundles); yields (bundle, patients, resources)."""
    entries: list[dict[str, Any]] = []
    patients = 0
    for index in range(lo, hi):
        entries += patient_entries(seed, index, obs_per_patient, part)
        patients += 1
        if len(entries) >= size:
            yield (
                {"resourceType": "Bundle", "type": "transaction", "entry": entries},
                patients,
                len(entries),
            )
            entries, patients = [], 0
    if entries:
        yield (
            {"resourceType": "Bundle", "type": "transaction", "entry": entries},
            patients,
            len(entries),
        )


if __name__ == "__main__":  # a quick look at the data
    import json
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    for i in range(n):
        for e in patient_entries(42, i + 1, 10)[:3]:
            print(json.dumps(e["resource"]))
