"""compose.yaml and deploy/ against the Compose Specification and against the code.

No Docker engine runs here, so this is what CI can prove: the file is valid Compose, every command
runs a module that exists, every port is the one the service listens on, every REDLINE_* variable
is a real Settings field with a valid value, and the Redis configs say what docs/deploy.md requires.
Each check is a function that returns its findings, and a test feeds it a drifted copy to show
that it fails when the files drift.
"""

from __future__ import annotations

import json
import re
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).with_name("compose-spec.json")
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
OUR_SERVICES = ("api", "flusher", "matcher")
SCALABLE = ("flusher", "matcher")
# `${NAME:-default}` / `${NAME-default}` / `${NAME}`: Compose interpolation, resolved to defaults.
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")

Spec = dict[str, Any]


def load_compose() -> Spec:
    # Through JSON: YAML anchors share objects, and the drift tests change one service only.
    spec: Spec = json.loads(json.dumps(yaml.safe_load(COMPOSE.read_text())))
    return spec


def interpolate(value: object) -> str:
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def environment(service: Spec) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(v) for k, v in env.items()}


def service_settings(service: Spec) -> Settings:
    """The Settings a container of this service builds from its compose environment."""
    values = {
        k.removeprefix("REDLINE_").lower(): v
        for k, v in environment(service).items()
        if k.startswith("REDLINE_")
    }
    return Settings.model_validate(values)


def module_exists(module: str) -> bool:
    return find_spec(module) is not None


def python_module(command: object) -> str | None:
    """`python -m <module> ...` -> module."""
    if isinstance(command, list) and len(command) >= 3 and command[:2] == ["python", "-m"]:
        return str(command[2])
    return None


def container_ports(service: Spec) -> list[tuple[str | None, int]]:
    """(host part or None, container port) of each `ports` entry."""
    found: list[tuple[str | None, int]] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published = entry.get("published")
            found.append((None if published is None else str(published), int(entry["target"])))
            continue
        host, _, target = str(entry).rpartition(":")
        found.append((host or None, int(target.split("/")[0])))
    return found


# Checks: each returns a list of problems (empty when the files agree with the code) -----------
def schema_problems(spec: Spec) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(spec)
    ]


def env_problems(spec: Spec) -> list[str]:
    fields = set(Settings.model_fields)
    problems = []
    for name, service in spec["services"].items():
        for key in environment(service):
            if key.startswith("REDLINE_") and key.removeprefix("REDLINE_").lower() not in fields:
                problems.append(f"{name}: {key} is not a Settings field")
    return problems


def port_problems(spec: Spec) -> list[str]:
    problems = []
    expected = {"api": "api_port", "matcher": "matcher_port"}
    for name, service in spec["services"].items():
        if name not in OUR_SERVICES:
            continue
        settings = service_settings(service)
        ports = container_ports(service)
        if name in expected:
            want = getattr(settings, expected[name])
            if [target for _, target in ports] != [want]:
                problems.append(f"{name}: publishes {ports}, but listens on {want}")
            host = "0.0.0.0"
            if getattr(settings, expected[name].replace("port", "host")) != host:
                problems.append(f"{name}: must listen on {host} inside its container")
        elif ports:
            problems.append(f"{name}: has no listening port, but publishes {ports}")
        if name in SCALABLE and any(host is not None for host, _ in ports):
            problems.append(f"{name}: a fixed host port would stop --scale {name}=N")
    return problems


def command_problems(spec: Spec) -> list[str]:
    problems = []
    for name, service in spec["services"].items():
        if "build" not in service:
            continue
        commands = [("command", service.get("command"))]
        if "healthcheck" in service:
            commands.append(("healthcheck", service["healthcheck"]["test"][1:]))
        for what, command in commands:
            module = python_module(command)
            if module is None:
                problems.append(f"{name}: {what} is not `python -m <module>`: {command}")
            elif not module_exists(module):
                problems.append(f"{name}: {what} runs {module}, which does not exist")
    return problems


def health_problems(spec: Spec) -> list[str]:
    problems = []
    for name, service in spec["services"].items():
        one_shot = service.get("restart") == "no"
        if not one_shot and "healthcheck" not in service:
            problems.append(f"{name}: no healthcheck")
        for dep, how in (service.get("depends_on") or {}).items():
            dep_one_shot = spec["services"][dep].get("restart") == "no"
            want = "service_completed_successfully" if dep_one_shot else "service_healthy"
            if how.get("condition") != want:
                problems.append(f"{name}: depends on {dep} with {how}, want {want}")
    return problems


# Tests -----------------------------------------------------------------------------------------
def test_compose_yaml_is_valid_against_the_compose_specification() -> None:
    assert schema_problems(load_compose()) == []


def test_the_schema_check_catches_an_invalid_file() -> None:
    spec = load_compose()
    spec["services"]["api"]["depends_on"]["redis"]["condition"] = "when_it_feels_like_it"
    spec["services"]["api"]["healthcheck"]["retries"] = {"many": True}
    assert len(schema_problems(spec)) == 2


def test_every_service_the_code_has_is_in_compose_with_its_dependencies() -> None:
    services = load_compose()["services"]
    assert set(OUR_SERVICES) | {"redis", "postgres", "migrate"} == set(services)
    for name in OUR_SERVICES:
        needs = set(services[name]["depends_on"])
        assert {"redis", "postgres", "migrate"} <= needs, name


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_each_service_runs_its_own_module(name: str) -> None:
    service = load_compose()["services"][name]
    module = python_module(service["command"])
    assert module == f"services.{name}"
    assert module_exists(module)


def test_every_command_and_healthcheck_module_exists() -> None:
    assert command_problems(load_compose()) == []


def test_the_command_check_catches_a_missing_module() -> None:
    spec = load_compose()
    spec["services"]["flusher"]["command"] = ["python", "-m", "services.flushr"]
    spec["services"]["api"]["healthcheck"]["test"] = ["CMD", "curl", "-f", "http://x/readyz"]
    assert len(command_problems(spec)) == 2


def test_every_redline_variable_is_a_settings_field_with_a_valid_value() -> None:
    spec = load_compose()
    assert env_problems(spec) == []
    for name in (*OUR_SERVICES, "migrate"):
        settings = service_settings(spec["services"][name])  # raises if a value is invalid
        assert settings.env == "production", name
        assert settings.database_url is not None, name
        assert name == "migrate" or settings.state_redis_url is not None, name


def test_the_env_check_catches_a_variable_the_code_does_not_read() -> None:
    spec = load_compose()
    spec["services"]["api"]["environment"]["REDLINE_FLUSH_INTERVALS"] = "5"
    assert env_problems(spec) == ["api: REDLINE_FLUSH_INTERVALS is not a Settings field"]


def test_each_service_uses_its_own_redis_user() -> None:
    services = load_compose()["services"]
    for name in OUR_SERVICES:
        url = environment(services[name])["REDLINE_REDIS_URL"]
        assert url.startswith(f"redis://redline-{name}:"), url


def test_ports_match_the_settings_and_scalable_services_have_no_fixed_host_port() -> None:
    assert port_problems(load_compose()) == []


def test_the_port_check_catches_drift() -> None:
    spec = load_compose()
    spec["services"]["api"]["environment"]["REDLINE_API_PORT"] = "9000"
    spec["services"]["matcher"]["ports"] = ["8001:8001"]
    spec["services"]["flusher"]["ports"] = ["9100"]
    problems = port_problems(spec)
    assert any(p.startswith("api: publishes") for p in problems)
    assert any("--scale matcher" in p for p in problems)
    assert any(p.startswith("flusher: has no listening port") for p in problems)


def test_the_compose_defaults_match_the_settings_defaults() -> None:
    """Compose sets the ports explicitly; they must still be the documented defaults."""
    defaults = Settings()
    services = load_compose()["services"]
    assert service_settings(services["api"]).api_port == defaults.api_port == 8000
    assert service_settings(services["matcher"]).matcher_port == defaults.matcher_port == 8001


def test_every_health_check_exists_and_dependencies_wait_for_health() -> None:
    assert health_problems(load_compose()) == []


def test_files_compose_mounts_exist() -> None:
    for name, service in load_compose()["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts a missing {source}"


def test_dockerfile_caches_dependencies_runs_as_non_root_and_copies_real_files() -> None:
    text = DOCKERFILE.read_text()
    lock_copy = text.index("COPY pyproject.toml uv.lock")
    sync = text.index("uv sync --frozen --no-dev --no-group local")
    code_copy = text.index("COPY shared")
    assert lock_copy < sync < code_copy, "dependencies must be installed before code is copied"
    stages = text.split("\nFROM ")
    assert len(stages) == 3, "a build stage and a runtime stage"
    runtime = stages[-1]
    assert "uv" not in runtime.split("COPY --from=build")[0], "no uv in the runtime stage"
    assert re.search(r"^USER (?!root)\w+", runtime, re.M), "runtime must not run as root"
    for line in re.findall(r"^COPY (?!--from)(.+)$", runtime, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies a missing {source}"
    cmd = re.search(r"^CMD (\[.*\])$", runtime, re.M)
    assert cmd is not None and module_exists(str(python_module(json.loads(cmd.group(1)))))


def test_dockerfile_env_sets_only_real_settings() -> None:
    names = re.findall(r"\b(REDLINE_[A-Z0-9_]+)=", DOCKERFILE.read_text())
    assert names, "the image sets production defaults"
    assert [
        n for n in names if n.removeprefix("REDLINE_").lower() not in Settings.model_fields
    ] == []


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", ".data", ".env", "tests"):
        assert path in ignored, path


def redis_conf(name: str) -> dict[str, str]:
    lines = (ROOT / "deploy" / "redis" / name).read_text().splitlines()
    pairs = (line.split(None, 1) for line in lines if line.strip() and not line.startswith("#"))
    return {key: value.strip() for key, value in pairs}


def test_state_redis_is_durable_and_never_evicts() -> None:
    conf = redis_conf("state.conf")
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["aclfile"] == "/etc/valkey/users.acl"


def test_cache_redis_evicts_lru_under_a_memory_cap() -> None:
    conf = redis_conf("cache.conf")
    assert conf["maxmemory-policy"] == "allkeys-lru"
    assert conf["maxmemory"].rstrip("kmgbKMGB").isdigit() and conf["maxmemory"] != "0"
    assert conf["appendonly"] == "no"
