"""A worker's api_key is used (health checks, discovery, routed requests) and never shown."""

from __future__ import annotations

from picker_bench.loopback import loopback
from picker_bench.stack import ENVOY_MTLS, SimSpec, local_fleet, start_sim
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER, mtls_settings

KEY = "sk-never-show-4c1d"
OTHER_KEY = "sk-also-secret-9e2a"
ADMIN_TOKEN = "admin-token-never-show-77f3"


def test_api_keys_and_admin_token_appear_in_no_response_log_or_metric(
        pki: dict[str, str]) -> None:
    # Keyed workers need Envoy authenticated on ext_proc (mutual TLS).
    settings = {**FAST_HEALTH, **mtls_settings(pki), "admin": {"token": ADMIN_TOKEN}}
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with local_fleet([SimSpec("locked", MODEL, api_key=KEY)], policy="round_robin",
                     picker_settings=settings, envoy_template=ENVOY_MTLS,
                     tls_files=pki) as fleet:
        # Routed requests carry the worker's key (the sim answers 401 without it), replacing
        # whatever the client sent.
        response = loopback().post(
            f"{fleet.envoy_url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": "Bearer client-token"}, timeout=10,
        )
        assert response.status_code == 200 and response.headers[SIM_HEADER] == "locked"

        # Discovery through the admin API uses the key too (/v1/models is locked).
        extra = SimSpec("locked-2", MODEL, api_key=OTHER_KEY)
        proc = start_sim(extra, fleet.workdir)
        try:
            added = loopback().post(f"{fleet.admin_url}/workers", timeout=30, headers=auth, json={
                "url": f"http://127.0.0.1:{extra.port}", "id": "locked-2", "api_key": OTHER_KEY})
            assert added.status_code == 201, added.text
            texts = [
                added.text,
                loopback().get(f"{fleet.admin_url}/workers").text,
                loopback().get(f"{fleet.admin_url}/workers/locked").text,
                # (locked-2: the API may change it; "locked" belongs to the config file)
                loopback().patch(f"{fleet.admin_url}/workers/locked-2", json={"cost": 2},
                                 headers=auth).text,
                # A wrong token's refusal must not echo either token.
                loopback().patch(f"{fleet.admin_url}/workers/locked", json={"cost": 3},
                                 headers={"authorization": f"Bearer {ADMIN_TOKEN}x"}).text,
                loopback().get(f"{fleet.admin_url}/metrics").text,
                loopback().get(f"{fleet.admin_url}/openapi.json").text,
                loopback().delete(f"{fleet.admin_url}/workers/locked-2", headers=auth).text,
            ]
        finally:
            proc.stop()
        fleet.processes["picker"].stop()
        texts += [p.log_path.read_text(errors="replace") for p in fleet.processes.values()
                  if p.name == "picker"]
        texts += [path.read_text() for path in fleet.workdir.glob("*.log")
                  if path.name.startswith("picker")]
        for text in texts:
            assert KEY not in text and OTHER_KEY not in text and ADMIN_TOKEN not in text
