"""Static checks of the Docker deployment, for what the live run (test_compose_live.py) cannot
see: one project image, data isolation of the mounts, flags accepted by flwr 1.42, TLS and
SuperNode authentication by default, the CA key in no service, the Fleet-only gateway, the PKI."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator.gateway import nginx_conf
from coordinator.pki import make_pki

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PLAIN = yaml.safe_load((ROOT / "docker-compose.plain.yml").read_text())
AMAZON = yaml.safe_load((ROOT / "docker-compose.amazon.yml").read_text())
SILOS = ("beauty", "sports", "pantry")
REAL_SILOS = (*SILOS, "scientific", "office")  # the real-data overlay adds two
BIN = Path(sys.executable).parent


def _svc(name: str, overlay: dict | None = None) -> dict:
    svc = dict(BASE["services"].get(name, {}))
    if overlay and name in overlay["services"]:
        svc.update(overlay["services"][name])
    return svc


def _services(overlay: dict | None) -> list[str]:
    """Every service of the base file with ``overlay`` over it (its own services included)."""
    return list(dict.fromkeys([*BASE["services"], *((overlay or {}).get("services", {}))]))


def _silos(overlay: dict | None) -> tuple[str, ...]:
    return REAL_SILOS if overlay is AMAZON else SILOS


def _program(cmd: list[str]) -> list[str]:
    """The service's program: what follows ``until-done ... --`` if wrapped."""
    return cmd[cmd.index("--") + 1:] if "until-done" in cmd else cmd


def _help_flags(binary: str) -> set[str]:
    out = subprocess.run([str(BIN / binary), "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]+)", out))


def _volume(spec: str) -> tuple[str, str, bool]:
    """(source, target, read-only) of a short-syntax volume; the source may hold ${VAR:?...}."""
    ro = spec.endswith(":ro")
    rest = spec[:-3] if spec.endswith((":ro", ":rw")) else spec
    source, target = rest.rsplit(":", 1)
    return source, target, ro


def test_one_project_image_built_from_the_projects_files():
    for name, svc in BASE["services"].items():
        assert svc["image"] == "mergerec:0.2" and svc["pull_policy"] == "never", name
    assert set(BASE["services"]["pki"]["build"]["args"]) == {"BASE_IMAGE", "PIP_SOURCE"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in dockerfile and "ARG PIP_SOURCE=index" in dockerfile
    assert "--no-index --find-links /wheelhouse" in dockerfile
    assert "download.pytorch.org/whl/cpu" in dockerfile and "'+cpu' in torch.__version__" in dockerfile
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in dockerfile and "USER app" in dockerfile


@pytest.mark.parametrize("overlay", [None, PLAIN, AMAZON])
def test_each_silo_data_is_mounted_read_only_into_its_own_executor_only(overlay):
    for name in _services(overlay):
        svc = _svc(name, overlay)
        for spec in svc.get("volumes", []):
            source, target, ro = _volume(spec)
            owner = next((s for s in _silos(overlay) if s in source.lower() and ("data" in source.lower()
                                                                      or ".tar.gz" in source)), None)
            if owner is None or source.startswith("pki-"):
                continue
            assert name in (f"superexec-clientapp-{owner}", f"data-{owner}"), f"{name} mounts {spec}"
            if name.startswith("superexec-clientapp-"):
                assert ro and target.startswith("/data"), spec
    for silo in _silos(overlay):
        executor = _svc(f"superexec-clientapp-{silo}", overlay)
        assert executor["network_mode"] == f"service:supernode-{silo}"
        node = _program(_svc(f"supernode-{silo}", overlay)["command"])
        assert node[node.index("--host") + 1] == "127.0.0.1"  # its Runtime API: its executor only
        assert executor["command"][-1] == "127.0.0.1:9094"


@pytest.mark.parametrize("overlay", [None, PLAIN, AMAZON])
def test_flags_are_accepted_by_flwr_1_42(overlay):
    accepted = {b: _help_flags(b) for b in ("flower-superlink", "flower-supernode", "flower-superexec")}
    for name in _services(overlay):
        cmd = _program(_svc(name, overlay)["command"])
        if cmd[0] in accepted:
            flags = {c for c in cmd if c.startswith("--")}
            assert flags <= accepted[cmd[0]], f"{name}: unknown flags {flags - accepted[cmd[0]]}"


def test_tls_and_supernode_authentication_by_default_plain_only_by_opt_in():
    link = _program(_svc("superlink")["command"])
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"} <= set(link)
    for overlay in (None, AMAZON):
        for silo in _silos(overlay):
            node = _program(_svc(f"supernode-{silo}", overlay)["command"])
            assert "--insecure" not in node
            assert {"--root-certificates", "--auth-supernode-private-key"} <= set(node)
    for silo in SILOS:
        assert "--insecure" in _program(_svc(f"supernode-{silo}", PLAIN)["command"])
    assert "--insecure" in _program(_svc("superlink", PLAIN)["command"])


@pytest.mark.parametrize("overlay", [None, AMAZON])
def test_the_ca_key_is_in_no_service_and_keys_go_only_where_needed(overlay):
    for name in _services(overlay):
        svc = _svc(name, overlay)
        sources = [_volume(v)[0] for v in svc.get("volumes", [])]
        if overlay is AMAZON and name == "pki":  # an overlay's volumes add to the base's
            sources += [_volume(v)[0] for v in BASE["services"]["pki"]["volumes"]]
        if "pki-ca" in sources:
            assert name == "pki", f"{name} mounts the CA key's volume"
        for silo in _silos(overlay):
            if f"pki-supernode-{silo}" in sources:
                assert name in ("pki", f"supernode-{silo}"), f"{name} holds {silo}'s SuperNode key"
        if "pki-superlink" in sources:
            assert name in ("pki", "superlink", "fleet-gateway"), f"{name} holds the server key"


def test_only_the_fleet_api_reaches_the_silos():
    assert not any("ports" in svc for svc in BASE["services"].values()), \
        "nothing is published: the job's traffic stays on the compose networks"
    for silo in SILOS:
        assert _svc(f"supernode-{silo}")["networks"] == ["fleet"]
    assert _svc("superlink")["networks"] == ["coordinator"]
    assert set(_svc("fleet-gateway")["networks"]) == {"coordinator", "fleet"}
    for tls in (True, False):
        conf = nginx_conf(tls)
        locations = re.findall(r"location\s+(\S+)\s*\{([^}]*)\}", conf)
        assert [loc for loc, _ in locations] == ["/v1/fleet/", "/"]
        assert "proxy_pass" in locations[0][1] and "return 403" in locations[1][1]
        assert "client_max_body_size 64m;" in conf
        assert ("ssl_certificate" in conf) == tls and ("proxy_ssl_verify on" in conf) == tls


def test_pki_keys_are_private_and_the_certificate_verifies(tmp_path):
    make_pki(tmp_path, ["beauty"], ["DNS:superlink", "DNS:fleet-gateway", "DNS:coord.example"])
    for key in ("ca/ca.key", "superlink/server.key", "supernode-beauty/supernode"):
        assert stat.S_IMODE(os.stat(tmp_path / key).st_mode) == 0o600, key
    assert not (tmp_path / "superlink" / "ca.key").exists()
    from cryptography import x509
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "superlink" / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "coord.example" in sans.get_values_for_type(x509.DNSName)
    pub = (tmp_path / "public" / "beauty.pub").read_text()
    assert pub.startswith("ecdsa-sha2-nistp384 ") and pub.split()[-1] == "beauty"
    first = (tmp_path / "ca" / "ca.key").read_bytes()
    make_pki(tmp_path, ["beauty", "sports"], ["DNS:superlink"])  # adds a silo, keeps the CA
    assert (tmp_path / "ca" / "ca.key").read_bytes() == first
    assert (tmp_path / "public" / "sports.pub").is_file()


def test_pki_files_and_folders_ignore_a_permissive_umask(tmp_path):
    """Under umask 000 the key folders were 0777: keys stay their owner's, public files
    readable, nothing writable by others."""
    old = os.umask(0)
    try:
        make_pki(tmp_path / "pki", ["beauty"], ["DNS:superlink"])
    finally:
        os.umask(old)
    out = tmp_path / "pki"
    for folder in ("ca", "superlink", "supernode-beauty"):
        assert stat.S_IMODE(os.stat(out / folder).st_mode) == 0o700, folder
    for path in [out, out / "public", *out.rglob("*")]:
        assert not stat.S_IMODE(os.stat(path).st_mode) & 0o022, path
    assert stat.S_IMODE(os.stat(out / "supernode-beauty" / "supernode").st_mode) == 0o600


def test_node_config_keys_are_ones_the_silo_reads():
    from silos.client_app import BUDGET_KEYS, EVAL_KEYS, POLICY_KEYS
    known = {"silo", "data-dir", "format", "work-dir", "eval-only", "audit-dir", "encoder-dir",
             "eval-ks", *POLICY_KEYS, *BUDGET_KEYS, *EVAL_KEYS}
    for overlay in (None, AMAZON):
        for silo in _silos(overlay):
            cmd = _program(_svc(f"supernode-{silo}", overlay)["command"])
            config = cmd[cmd.index("--node-config") + 1]
            assert set(re.findall(r"([a-z-]+)=", config)) <= known


def test_the_real_data_overlay_runs_the_five_domains_of_amazon5():
    """pki, register and submit agree on the silos; each silo's node config names a domain of
    the experiment the overlay's header tells users to run, with its format."""
    from common.config import load_yaml
    from common.settings import PipelineConfig

    pki = " ".join(AMAZON["services"]["pki"]["command"])
    register = AMAZON["services"]["register"]["command"]
    assert re.findall(r"--silo (\w+)", pki) == list(REAL_SILOS)
    assert [register[i + 1] for i, c in enumerate(register) if c == "--silo"] == list(REAL_SILOS)
    assert f"--silos {len(REAL_SILOS)}" in " ".join(AMAZON["services"]["submit"]["command"])
    exp = load_yaml(PipelineConfig, ROOT / "experiments/configs/pipelines/amazon5.yaml")
    formats = {s.name: s.format for s in exp.data.sources}
    assert "amazon5.yaml" in (ROOT / "docker-compose.amazon.yml").read_text()
    for silo in REAL_SILOS:
        config = _program(_svc(f"supernode-{silo}", AMAZON)["command"])[-1]
        name = re.search(r"silo='(\w+)'", config).group(1)
        assert formats[name] == (re.search(r"format='(\w+)'", config) or [None, "mergerec_json"])[1]
