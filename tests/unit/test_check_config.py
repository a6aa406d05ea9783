"""`llm-picker check-config`: a configuration, or the ConfigMaps of a manifest, checked as
serve checks them at start-up, without starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llm_picker.check_config import check_files

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_example_passes() -> None:
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml")
                      if "picker" in p.name)
    lines = check_files(examples, env={})
    assert examples and all(passed for passed, _ in lines), lines


def test_the_shipped_configmap_passes_with_the_token_its_deployment_gives() -> None:
    path = str(ROOT / "deploy/base/configmap.yaml")
    refused = check_files([path], env={})
    assert refused == [(False, f"{path}: ConfigMap llm-picker, data.picker.yaml: configuration "
                               "error: admin: listening on 0.0.0.0 needs admin.token (or "
                               "admin.allow_insecure: true)")]
    passed = check_files([path], env={"LLM_PICKER_ADMIN__TOKEN": "s3cret-value"})
    assert passed[0][0] and "policy cache_aware" in passed[0][1]
    assert passed[1] == (True, "(checked with the environment's LLM_PICKER_ADMIN__TOKEN, as "
                               "serve applies them)")


def test_a_bad_key_is_named_with_its_file_and_configmap(tmp_path: Path) -> None:
    plain = tmp_path / "picker.yaml"
    plain.write_text("workers: [{url: 'http://a:1', priority: high}]\n")
    bundle = tmp_path / "all.yaml"
    bundle.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: picker}\n"
        "data:\n  notes.txt: hello\n  picker.yaml: |\n    policy: nope\n")
    lines = check_files([str(plain), str(bundle)], env={})
    assert [passed for passed, _ in lines] == [False, False]
    assert lines[0][1].startswith(f"{plain}: configuration error: workers.0.priority")
    assert lines[1][1].startswith(f"{bundle}: ConfigMap picker, data.picker.yaml: "
                                  "configuration error: policy.name: unknown policy 'nope'")


def test_manifests_without_a_configmap_and_broken_yaml_say_so(tmp_path: Path) -> None:
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("policy: [unclosed\n")
    lines = check_files([str(manifest), str(broken), str(tmp_path / "missing.yaml")], env={})
    assert lines[0] == (False, f"{manifest}: configuration error: config: {manifest} holds "
                               "Kubernetes manifests (Service) but no ConfigMap with a data key "
                               "ending in .yaml or .yml")
    assert not lines[1][0] and "is not valid YAML" in lines[1][1] and "line 2" in lines[1][1]
    assert not lines[2][0] and "cannot read" in lines[2][1]


def test_port_collisions_are_found_as_serve_finds_them(tmp_path: Path) -> None:
    path = tmp_path / "picker.yaml"
    path.write_text("extproc: {port: 9402}\nadmin: {port: 9402}\n")
    [(passed, line)] = check_files([str(path)], env={})
    assert not passed and "admin.port: 9402 is also extproc.port" in line


def test_the_command_exits_2_on_any_failure_and_0_when_all_pass(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("policy: round_robin\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: nope\n")

    def run(*files: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llm_picker", "check-config",
                               *map(str, files)], capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin"})

    ok = run(good)
    assert ok.returncode == 0 and ok.stdout.startswith(f"{good}: OK (policy round_robin")
    assert "no workers and no discovery" in ok.stdout
    failed = run(good, bad)
    assert failed.returncode == 2 and "policy.name: unknown policy" in failed.stderr


def test_replicas_need_a_fixed_hash_seed_in_the_environment_checked(tmp_path: Path) -> None:
    """serve refuses `replicas:` without PYTHONHASHSEED; check-config must say the same of the
    environment it checks with, not pass a file serve would refuse."""
    path = tmp_path / "picker.yaml"
    path.write_text("prefix: {enabled: true}\nreplicas: {listen: '127.0.0.1:9004', "
                    "peers: ['10.0.0.5:9004'], secret: 0123456789abcdef0123}\n")
    [(passed, line)] = check_files([str(path)], env={})
    assert not passed and "replicas: block hashes are Python's salted string hash" in line
    assert "PYTHONHASHSEED" in line
    [(passed, line)] = check_files([str(path)], env={"PYTHONHASHSEED": "1234"})
    assert passed, line


def test_a_malformed_configmap_is_an_error_naming_it_not_a_traceback(tmp_path: Path) -> None:
    for field, value in (("data", "5"), ("metadata", "5"), ("data", "[a.yaml]")):
        path = tmp_path / "bundle.yaml"
        body = {"data": "{picker.yaml: 'policy: random'}", "metadata": "{name: p}",
                field: value}
        path.write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {body['metadata']}\n"
                        f"data: {body['data']}\n")
        [(passed, line)] = check_files([str(path)], env={})
        assert not passed and f"a ConfigMap's {field} must be a mapping" in line, line
