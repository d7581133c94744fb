"""What a SMART token may do: requested ∩ registration ∩ the user, then the role matrix and
the patient context at the policy point (SECURITY B2, B7); EHR launch."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.auth.identity import SignedInAdmin, bearer, create_user, login
from tests.auth.smart.smart_kit import (
    Clinic,
    Pkce,
    authorize_params,
    authorized_tokens,
    code_of,
    exchange,
    observation,
    redirect_query,
    register,
    sign_in,
)

from carechart.auth.config import AuthComponents
from carechart.auth.principal import Role
from carechart.context import AppContext

EVERYTHING = "launch launch/patient patient/*.cruds user/*.cruds offline_access"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def app_id(anonymous: TestClient, admin: SignedInAdmin) -> str:
    client_id: str = register(anonymous, admin.access_token, scope=EVERYTHING)["client_id"]
    return client_id


def _get(http: TestClient, token: str, path: str) -> int:
    return http.get(path, headers=bearer(token)).status_code


def test_a_nurse_asking_for_everything_still_cannot_delete(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    tokens = authorized_tokens(
        anonymous, app_id, clinic.nurse.email, clinic.nurse.password, scope="user/*.cruds"
    )
    assert tokens["scope"] == "user/*.cruds"
    assert "patient" not in tokens
    assert tokens["fhirUser"] == "Practitioner/dr-a"
    token = tokens["access_token"]
    assert _get(anonymous, token, "/fhir/Observation/o-p1") == 200
    assert _get(anonymous, token, "/fhir/Observation/o-p3") == 404  # not her patient
    deleted = anonymous.delete("/fhir/Observation/o-p1", headers=bearer(token))
    assert deleted.status_code == 403
    assert _get(anonymous, token, "/fhir/Observation/o-p1") == 200


def test_an_app_gets_no_more_than_its_registration(
    anonymous: TestClient, admin: SignedInAdmin, clinic: Clinic
) -> None:
    narrow = register(anonymous, admin.access_token, scope="user/Observation.rs")["client_id"]
    tokens = authorized_tokens(
        anonymous, narrow, clinic.physician.email, clinic.physician.password, scope="user/*.cruds"
    )
    assert tokens["scope"] == "user/Observation.rs"
    token = tokens["access_token"]
    assert _get(anonymous, token, "/fhir/Observation/o-p1") == 200
    assert _get(anonymous, token, "/fhir/Patient/p1") in (403, 404)


def test_a_wildcard_request_is_narrowed_letter_by_letter(
    anonymous: TestClient, admin: SignedInAdmin, clinic: Clinic
) -> None:
    app = register(anonymous, admin.access_token, scope="user/*.rs")["client_id"]
    tokens = authorized_tokens(
        anonymous,
        app,
        clinic.physician.email,
        clinic.physician.password,
        scope="user/*.cruds user/Observation.read",
    )
    assert set(tokens["scope"].split()) == {"user/*.rs", "user/Observation.rs"}
    token = tokens["access_token"]
    created = anonymous.post(
        "/fhir/Observation", json=observation("new", "p1"), headers={**bearer(token), **FHIR_JSON}
    )
    assert created.status_code == 403


def test_a_patient_gets_only_their_own_compartment(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    tokens = authorized_tokens(
        anonymous,
        app_id,
        clinic.patient.email,
        clinic.patient.password,
        scope="launch/patient patient/*.rs user/*.rs",
    )
    assert tokens["patient"] == "p1"
    assert set(tokens["scope"].split()) == {"launch/patient", "patient/*.rs"}  # no user/
    token = tokens["access_token"]
    assert _get(anonymous, token, "/fhir/Patient/p1") == 200
    assert _get(anonymous, token, "/fhir/Observation/o-p1") == 200
    assert _get(anonymous, token, "/fhir/Patient/p2") == 404
    assert _get(anonymous, token, "/fhir/Observation/o-p2") == 404
    found = anonymous.get("/fhir/Observation", headers=bearer(token)).json()
    subjects = {e["resource"]["subject"]["reference"] for e in found.get("entry", [])}
    assert subjects == {"Patient/p1"}
    created = anonymous.post(
        "/fhir/Observation", json=observation("new", "p1"), headers={**bearer(token), **FHIR_JSON}
    )
    assert created.status_code == 403


def test_a_patient_asking_only_for_user_scopes_gets_an_error(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    pkce = Pkce()
    params = authorize_params(anonymous, app_id, pkce, scope="user/*.rs")
    answer = sign_in(anonymous, params, clinic.patient.email, clinic.patient.password)
    assert redirect_query(answer)["error"] == "invalid_scope"


def test_a_standalone_launch_narrows_staff_to_the_chosen_patient(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    tokens = authorized_tokens(
        anonymous,
        app_id,
        clinic.physician.email,
        clinic.physician.password,
        scope="launch/patient patient/*.rs",
        patient="p1",
    )
    assert tokens["patient"] == "p1"
    token = tokens["access_token"]
    assert _get(anonymous, token, "/fhir/Observation/o-p1") == 200
    # p2 is hers too, but not the patient in context.
    assert _get(anonymous, token, "/fhir/Patient/p2") == 404
    assert _get(anonymous, token, "/fhir/Observation/o-p2") == 404


def _first_party(http: TestClient, person: Any) -> str:
    token: str = login(http, person.email, person.password).json()["access_token"]
    return token


def _launch(http: TestClient, token: str, patient_id: str, **extra: str) -> Any:
    return http.post(
        "/api/v1/smart/launch", json={"patient_id": patient_id, **extra}, headers=bearer(token)
    )


def test_an_ehr_launch_binds_the_patient(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    created = _launch(anonymous, _first_party(anonymous, clinic.physician), "p2")
    assert created.status_code == 201, created.text
    launch = created.json()["launch"]
    assert created.json()["expires_in"] == 300
    pkce = Pkce()
    params = authorize_params(anonymous, app_id, pkce, scope="launch patient/*.rs", launch=launch)
    page = anonymous.get("/oauth2/authorize", params=params)
    assert page.status_code == 200
    assert 'name="patient"' not in page.text
    answer = sign_in(anonymous, params, clinic.physician.email, clinic.physician.password)
    tokens = exchange(anonymous, app_id, code_of(answer), pkce).json()
    assert tokens["patient"] == "p2"
    assert "launch" in tokens["scope"].split()
    assert _get(anonymous, tokens["access_token"], "/fhir/Observation/o-p2") == 200
    assert _get(anonymous, tokens["access_token"], "/fhir/Observation/o-p1") == 404
    # A launch works once.
    again = sign_in(anonymous, params, clinic.physician.email, clinic.physician.password)
    assert "code" not in redirect_query(again)


def test_a_launch_is_only_for_the_clinician_who_opened_it(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    launch = _launch(anonymous, _first_party(anonymous, clinic.physician), "p1").json()["launch"]
    params = authorize_params(anonymous, app_id, Pkce(), scope="launch patient/*.rs", launch=launch)
    nurse = sign_in(anonymous, params, clinic.nurse.email, clinic.nurse.password)
    assert nurse.status_code == 400
    assert "location" not in nurse.headers


def test_a_launch_needs_a_patient_the_clinician_may_see(
    anonymous: TestClient, clinic: Clinic
) -> None:
    token = _first_party(anonymous, clinic.physician)
    assert _launch(anonymous, token, "p3").status_code == 404  # Dr B's patient
    assert _launch(anonymous, token, "nobody").status_code == 404
    assert _launch(anonymous, token, "p1", client_id="no-such-app").status_code == 404


def test_only_clinicians_open_launches(
    anonymous: TestClient, clinic: Clinic, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    assert anonymous.post("/api/v1/smart/launch", json={"patient_id": "p1"}).status_code == 401
    user, password = create_user(ctx, auth_parts, role=Role.front_desk)
    token = login(anonymous, user.email, password).json()["access_token"]
    assert _launch(anonymous, token, "p1").status_code == 403
    patient = _first_party(anonymous, clinic.patient)
    assert _launch(anonymous, patient, "p1").status_code == 403


def test_a_launch_for_another_app_is_refused(
    anonymous: TestClient, admin: SignedInAdmin, app_id: str, clinic: Clinic
) -> None:
    other = register(anonymous, admin.access_token, scope=EVERYTHING)["client_id"]
    launch = _launch(
        anonymous, _first_party(anonymous, clinic.physician), "p1", client_id=other
    ).json()["launch"]
    params = authorize_params(anonymous, app_id, Pkce(), scope="launch patient/*.rs", launch=launch)
    answer = anonymous.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert redirect_query(answer)["error"] == "invalid_request"


def test_smart_tokens_cannot_open_launches(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    tokens = authorized_tokens(
        anonymous, app_id, clinic.physician.email, clinic.physician.password, scope="user/*.rs"
    )
    assert _launch(anonymous, tokens["access_token"], "p1").status_code == 403
