"""End to end with a real SMART client library (``fhirclient``) against a real server.

The server is uvicorn on a free port, in a thread, serving the test application. The app is
a public client with PKCE: the library builds the authorization URL (S256 challenge) and
exchanges the code; the browser's part (fetch the sign-in form, post the credentials, catch
the redirect) is plain HTTP. With ``launch/patient patient/*.rs`` the library then reads the
patient's record and nothing else: another patient (one the physician could otherwise see)
is 404, and creating anything is 403.
"""

from __future__ import annotations

import html
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
import uvicorn
from fastapi import FastAPI
from fhirclient.auth import FHIROAuth2Auth
from fhirclient.client import FHIRClient
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException, FHIRPermissionDeniedException
from starlette.testclient import TestClient
from tests.auth.identity import SignedInAdmin
from tests.auth.smart.smart_kit import REDIRECT, Clinic, register

_HIDDEN = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    port = _free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,  # request lines would carry the authorization parameters
        lifespan="off",
        http="h11",
        ws="none",
        loop="asyncio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="smart-e2e-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_a_smart_app_reads_its_patient_and_nothing_else(
    app: FastAPI, anonymous: TestClient, admin: SignedInAdmin, clinic: Clinic
) -> None:
    scope = "launch/patient patient/*.rs"
    client_id = register(anonymous, admin.access_token, scope=scope, name="Chart viewer")[
        "client_id"
    ]
    with serve(app) as base, requests.Session() as browser:
        api_base = f"{base}/fhir"
        discovered = browser.get(f"{api_base}/.well-known/smart-configuration").json()
        smart = FHIRClient(
            settings={
                "app_id": client_id,
                "api_base": api_base,
                "redirect_uri": REDIRECT,
                "scope": scope,
            }
        )
        smart.wants_patient = False  # launch/patient is in the scope already
        smart.server.auth = FHIROAuth2Auth(
            state={
                "app_id": client_id,
                "aud": api_base,
                "authorize_uri": discovered["authorization_endpoint"],
                "token_uri": discovered["token_endpoint"],
                "redirect_uri": REDIRECT,
            }
        )

        # The browser: the sign-in form, the credentials, the redirect back to the app.
        authorize_url = smart.authorize_url
        assert "code_challenge_method=S256" in authorize_url
        form_page = browser.get(authorize_url, allow_redirects=False)
        assert form_page.status_code == 200, form_page.text
        fields = {name: html.unescape(value) for name, value in _HIDDEN.findall(form_page.text)}
        assert fields["client_id"] == client_id
        fields.update(
            email=clinic.physician.email, password=clinic.physician.password, patient="p1"
        )
        signed_in = browser.post(
            discovered["authorization_endpoint"], data=fields, allow_redirects=False
        )
        assert signed_in.status_code == 303, signed_in.text
        callback = signed_in.headers["location"]
        assert callback.startswith(REDIRECT + "?")

        # The library exchanges the code with its PKCE verifier and keeps the bearer token.
        smart.handle_callback(callback)
        assert smart.ready
        assert smart.patient_id == "p1"
        assert smart.launch_context is not None
        assert set(smart.launch_context["scope"].split()) == set(scope.split())
        server = smart.server

        patient = smart.patient
        assert patient is not None
        assert patient.id == "p1"
        assert patient.name[0].family == "Family-p1"
        found = list(Observation.where({"patient": "p1"}).perform_resources_iter(server))
        assert [o.id for o in found] == ["o-p1"]
        assert Observation.read("o-p1", server).subject.reference == "Patient/p1"

        # Nothing outside the launch patient, though the physician's role would reach p2.
        with pytest.raises(FHIRNotFoundException):
            Patient.read("p2", server)
        with pytest.raises(FHIRNotFoundException):
            Observation.read("o-p2", server)
        with pytest.raises(FHIRNotFoundException):
            Patient.read("p3", server)
        assert not list(Observation.where({"patient": "p2"}).perform_resources_iter(server))

        # Read-only scopes: creating anything is refused.
        new = Observation(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
                "subject": {"reference": "Patient/p1"},
            }
        )
        with pytest.raises(FHIRPermissionDeniedException):
            new.create(server)
        with pytest.raises(FHIRPermissionDeniedException):
            Patient({"resourceType": "Patient"}).create(server)
