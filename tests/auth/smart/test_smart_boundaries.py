"""Where SMART sessions meet the first-party identity routes (SECURITY B7).

A SMART app's refresh token belongs to a session opened for that app with the scopes it was
granted. Exchanged at the first-party ``/api/v1/auth/refresh`` it must not turn into a full
first-party session (``user/*.cruds``): that would let any app widen its own grant.
"""

from __future__ import annotations

from starlette.testclient import TestClient
from tests.auth.identity import SignedInAdmin, bearer
from tests.auth.smart.smart_kit import Clinic, authorized_tokens, register


def test_an_app_refresh_token_does_not_buy_a_first_party_session(
    anonymous: TestClient, admin: SignedInAdmin, clinic: Clinic
) -> None:
    scope = "launch/patient patient/Patient.rs offline_access"
    app_id = register(anonymous, admin.access_token, scope=scope)["client_id"]
    tokens = authorized_tokens(
        anonymous,
        app_id,
        clinic.physician.email,
        clinic.physician.password,
        scope=scope,
        patient="p1",
    )
    # Exchanged at the first-party route it would become a full user/*.cruds session.
    answer = anonymous.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert answer.status_code == 401
    # Refused without being spent: the app itself can still use it.
    again = anonymous.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": app_id,
            "refresh_token": tokens["refresh_token"],
        },
    )
    assert again.status_code == 200, again.text


def test_an_app_token_cannot_open_break_glass_or_register_clients(
    anonymous: TestClient, admin: SignedInAdmin, clinic: Clinic
) -> None:
    app_id = register(anonymous, admin.access_token, scope="user/*.rs")["client_id"]
    tokens = authorized_tokens(
        anonymous, app_id, clinic.physician.email, clinic.physician.password, scope="user/*.rs"
    )
    token = tokens["access_token"]
    launch = anonymous.post(
        "/api/v1/smart/launch", json={"patient_id": "p1"}, headers=bearer(token)
    )
    assert launch.status_code == 403
    clients = anonymous.get("/api/v1/smart/clients", headers=bearer(token))
    assert clients.status_code == 403
    # First-party routes are for the person at the keyboard, not an app acting for them.
    glass = anonymous.post(
        "/api/v1/access/break-glass",
        json={"patient_id": "p1", "reason": "unconscious in the emergency room"},
        headers=bearer(token),
    )
    assert glass.status_code == 403
    for route in ("/api/v1/auth/mfa/enroll", "/api/v1/auth/change-password"):
        body = {"current_password": "a" * 12, "new_password": "b" * 16}
        assert anonymous.post(route, json=body, headers=bearer(token)).status_code == 403
