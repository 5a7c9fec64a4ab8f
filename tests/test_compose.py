"""Static checks of the Docker deployment (no Docker engine on these machines): data isolation
of the mounts, flags accepted by flwr 1.42 and shared with the loopback deployment, pinned
images, Fleet-only exposure, the TLS + SuperNode-auth overlay and the certificate script."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator.launch import SiloSpec, superlink_args, supernode_args

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
TLS = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())
SILOS = ("beauty", "pantry", "sports")
BIN = Path(sys.executable).parent


def _svc(name: str, overlay: bool = False) -> dict:
    svc = dict(BASE["services"][name])
    if overlay and name in TLS["services"]:
        svc.update({k: v for k, v in TLS["services"][name].items() if k != "volumes"})
        svc["volumes"] = svc.get("volumes", []) + TLS["services"][name].get("volumes", [])
    return svc


def _flags(cmd: list[str]) -> set[str]:
    return {c for c in cmd if c.startswith("--")}


def _help_flags(binary: str) -> set[str]:
    out = subprocess.run([str(BIN / binary), "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]+)", out))


def _mount(volume: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume; the source may hold ${VAR:-default}."""
    spec = volume[:-3] if volume.endswith((":ro", ":rw")) else volume
    src, dst = spec.rsplit(":", 1)
    return src, dst


def test_services_and_pinned_images():
    expected = {"superlink", "fleet-gateway", "superexec-serverapp"}
    expected |= {f"supernode-{s}" for s in SILOS} | {f"superexec-clientapp-{s}" for s in SILOS}
    assert set(BASE["services"]) == expected
    for name in expected:
        svc = _svc(name)
        image = svc.get("image", "")
        assert re.search(r":\d+\.\d+\.\d+", image), f"{name}: image '{image}' is not pinned"
        assert not image.endswith(":latest")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG FLWR_VERSION=1.42.0" in dockerfile and "FROM flwr/superexec:${FLWR_VERSION}" in dockerfile
    assert "torch==2.13.0" in dockerfile and "download.pytorch.org/whl/cpu" in dockerfile
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in dockerfile


@pytest.mark.parametrize("overlay", [False, True])
def test_each_silo_mounts_only_its_own_data(overlay):
    for name in BASE["services"]:
        svc = _svc(name, overlay)
        data = [_mount(v) for v in svc.get("volumes", []) if _mount(v)[1].startswith("/data")]
        if name.startswith("superexec-clientapp-"):
            silo = name.rsplit("-", 1)[1]
            assert len(data) == 1, f"{name} mounts {data}"
            src, dst = data[0]
            assert silo.title() in src and all(o.title() not in src for o in SILOS if o != silo)
            assert any(v.endswith(":ro") for v in svc["volumes"] if dst in v), "data must be read-only"
            node = " ".join(_svc(f"supernode-{silo}", overlay)["command"])
            assert f"data-dir='{dst}'" in node
            assert svc["networks"] == [f"silo-{silo}"], "a silo's executor talks to its SuperNode only"
        else:
            assert not data, f"{name} mounts silo data {data}"
            assert not any(s.title() in v for s in SILOS for v in svc.get("volumes", [])
                           if "supernodes/" not in v), name


@pytest.mark.parametrize("overlay", [False, True])
def test_flags_are_accepted_by_flwr_1_42(overlay):
    accepted = {"flwr/superlink": _help_flags("flower-superlink"),
                "flwr/supernode": _help_flags("flower-supernode"),
                "mergerec-executor": _help_flags("flower-superexec")}
    deprecated = {"--fleet-api-address", "--control-api-address", "--serverappio-api-address",
                  "--clientappio-api-address", "--auth-list-public-keys",
                  "--auth-supernode-public-key", "--allow-runtime-dependency-installation"}
    for name in BASE["services"]:
        svc = _svc(name, overlay)
        kind = next((k for k in accepted if svc.get("image", "").startswith(k)), None)
        if kind is None:
            continue  # the nginx gateway
        flags = _flags(svc["command"])
        assert flags <= accepted[kind], f"{name}: unknown flags {flags - accepted[kind]}"
        assert not flags & deprecated, f"{name}: deprecated flags {flags & deprecated}"


def test_same_flags_and_node_config_as_the_loopback_deployment():
    loopback_link = _flags(superlink_args("state.db", 8000))
    link = _svc("superlink")["command"]
    assert loopback_link <= _flags(link)
    assert "--isolation" in link and link[link.index("--isolation") + 1] == "process"
    db = link[link.index("--database") + 1]
    assert any(_mount(v)[1] == "/app/" + db.split("/")[0] for v in _svc("superlink")["volumes"]), \
        "SuperLink state must live on a volume"
    spec_keys = set(re.findall(r"([a-z-]+)=", SiloSpec("x", ".").node_config(Path("/w"))))
    for silo in SILOS:
        cmd = _svc(f"supernode-{silo}")["command"]
        assert _flags(supernode_args("a:1", 2, "x")) <= _flags(cmd)
        node_config = cmd[cmd.index("--node-config") + 1]
        assert set(re.findall(r"([a-z-]+)=", node_config)) == spec_keys
        assert f"silo='{silo.title()}'" in node_config
        assert cmd[cmd.index("--superlink") + 1].endswith("fleet-gateway:9092}")
        assert "--isolation" in cmd and cmd[cmd.index("--isolation") + 1] == "process"
        exec_cmd = _svc(f"superexec-clientapp-{silo}")["command"]
        assert exec_cmd[exec_cmd.index("--runtime-api-address") + 1] == f"supernode-{silo}:9094"


def test_only_the_fleet_api_is_exposed_to_silos():
    link_ports = _svc("superlink")["ports"]
    assert all(p.startswith("127.0.0.1:") for p in link_ports), "Control API must stay on the host"
    assert _svc("fleet-gateway")["ports"] == ["9092:9092"]
    for silo in SILOS:
        assert "coordinator" not in _svc(f"supernode-{silo}")["networks"]
    for conf in ("fleet-gateway.conf", "fleet-gateway-tls.conf"):
        text = (ROOT / "deploy" / conf).read_text()
        locations = re.findall(r"location\s+(\S+)\s*\{([^}]*)\}", text)
        assert [loc for loc, _ in locations] == ["/v1/fleet/", "/"]
        assert "proxy_pass" in locations[0][1] and "return 403" in locations[1][1]


def test_tls_overlay_authenticates_supernodes():
    link = _svc("superlink", overlay=True)["command"]
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"} <= set(link)
    for silo in SILOS:
        svc = _svc(f"supernode-{silo}", overlay=True)
        cmd = svc["command"]
        assert "--insecure" not in cmd
        assert {"--root-certificates", "--auth-supernode-private-key"} <= set(cmd)
        keys = [v for v in svc["volumes"] if "supernodes/" in v]
        assert keys == [f"./deploy/certs/supernodes/{silo}:/app/keys/supernode:ro"]


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("ssh-keygen")),
                    reason="needs openssl and ssh-keygen")
def test_certificate_script(tmp_path):
    out = tmp_path / "certs"
    run = subprocess.run(["bash", str(ROOT / "deploy" / "generate-certs.sh"), str(out), "beauty"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin",
                                                              "EXTRA_SANS": "DNS:coord.example"})
    assert run.returncode == 0, run.stderr
    link = out / "superlink"
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(link / "ca.crt"),
                             str(link / "server.pem")], capture_output=True, text=True)
    assert verify.returncode == 0 and "OK" in verify.stdout
    text = subprocess.run(["openssl", "x509", "-in", str(link / "server.pem"), "-noout", "-text"],
                          capture_output=True, text=True).stdout
    for san in ("DNS:superlink", "DNS:fleet-gateway", "DNS:coord.example", "IP Address:127.0.0.1"):
        assert san in text
    pub = (out / "supernodes" / "beauty.pub").read_text()
    assert pub.startswith("ecdsa-sha2-nistp384 ") and shlex.split(pub)[-1] == "beauty"
