"""The fleet gateway's admission rule on its own: only the literal Fleet API calls pass, and what
is forwarded is exactly what was checked. The deployment test sends the same kinds of requests
over TLS to a real gateway in front of a real SuperLink."""

import pytest

from deploy.gateway import FLEET_PATHS, admit, normalize_path


@pytest.mark.parametrize("path", sorted(FLEET_PATHS))
def test_every_fleet_call_of_an_authenticated_supernode_passes_as_is(path):
    assert admit("POST", path.encode(), b"").path == path


@pytest.mark.parametrize(
    ("method", "raw", "query", "resolves_to"),
    [
        ("POST", "/v1/control/list-nodes", "", "/v1/control/list-nodes"),
        ("POST", "/v1/fleet/../control/list-nodes", "", "/v1/control/list-nodes"),
        ("POST", "/v1/fleet/%2e%2e/control/register-node", "", "/v1/control/register-node"),
        ("POST", "/v1/fleet/%252e%252e/control/start-run", "", "/v1/control/start-run"),  # decoded twice
        ("POST", "/v1/fleet/..%2fcontrol/stop-run", "", "/v1/control/stop-run"),
        ("POST", "/v1/fleet/..\\control/list-nodes", "", "/v1/control/list-nodes"),
        ("POST", "/v1/fleet/..%5Ccontrol/list-nodes", "", "/v1/control/list-nodes"),
        (
            "POST",
            "//v1/fleet/pull-messages",
            "",
            "/v1/fleet/pull-messages",
        ),  # harmless target, still not the literal path
        ("POST", "/v1/fleet/pull-messages/.", "", "/v1/fleet/pull-messages"),
        ("POST", "/v1/fleet/PULL-MESSAGES", "", "/v1/fleet/PULL-MESSAGES"),
        (
            "POST",
            "/v1/fleet/register-node",
            "",
            "/v1/fleet/register-node",
        ),  # self-registration: the operator registers keys
        ("POST", "/v1/fleet/unregister-node", "", "/v1/fleet/unregister-node"),
        ("GET", "/v1/fleet/get-run", "", "/v1/fleet/get-run"),
        ("POST", "/v1/fleet/get-run", "x=/v1/control/list-nodes", "/v1/fleet/get-run"),
        ("POST", "*", "", "/*"),
    ],
)
def test_everything_else_is_refused_and_says_what_it_resolves_to(method, raw, query, resolves_to):
    decision = admit(method, raw.encode("latin-1"), query.encode())
    assert decision.path is None and decision.reason
    assert normalize_path(raw) == resolves_to


def test_normalisation_cannot_climb_above_the_root():
    assert normalize_path("/../../../v1/control/x") == "/v1/control/x"
    assert normalize_path("/v1/fleet/%2e%2e/%2e%2e/%2e%2e/etc") == "/etc"
