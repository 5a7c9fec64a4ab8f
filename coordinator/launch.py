"""``mergerec-flower``: run the Flower app in simulation or as a multi-process deployment on
this machine, check the run's final status (``flwr run`` exits 0 even when a run failed) and
stop every process it started.

``simulate``: ``flwr run <project> local`` on Flower's simulation engine.
``deploy``: a SuperLink plus one SuperNode per silo, each with its own node config and data
folder (the synthetic default is written out as one MergeRec-JSON folder per silo), then
``flwr run <project> deploy`` against it; with TLS and SuperNode authentication (keys made
under ``<work>/pki``, each registered under its silo's name) unless ``--insecure``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError, load_yaml
from common.data import write_mergerec_json
from common.experiment import load_domains
from common.federated import SiloConfig
from common.federated.coordinator import safe_name
from common.pipeline import simulated_silo_config
from common.settings import PipelineConfig
from silos.client_app import node_config_entries

from .pki import DEFAULT_SANS, make_pki

PROJECT = Path(__file__).resolve().parents[1]
DONE = "finished:"
START_ATTEMPTS = 3  # flwr gives a local SuperLink 15 s to start; a busy 2-core machine may need more


@dataclass
class SiloSpec:
    """One silo of a deployment: its data folder/archive and its own settings (written into
    its node config: the silo reads nothing else)."""

    data: str
    settings: SiloConfig
    fmt: str = "mergerec_json"

    @property
    def name(self) -> str:
        return self.settings.name

    def node_config(self, audit_dir: str = "") -> str:
        values: dict[str, object] = {"silo": self.name, "data-dir": str(Path(self.data).resolve()),
                                     "format": self.fmt, "work-dir": self.settings.work_dir}
        try:
            values.update(node_config_entries(self.settings))
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        if audit_dir:
            values["audit-dir"] = str(Path(audit_dir).resolve())
        return " ".join(f"{k}={_node_value(v)}" for k, v in values.items())


def _node_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        if "'" in value:
            raise SystemExit(f"error: node config value {value!r} holds a quote")
        return f"'{value}'"
    return repr(value)


@dataclass
class Processes:
    """Processes this launcher started, each in its own session (stopped as a group)."""

    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def kill(self, name: str) -> None:
        """Kill one process group at once (used to make a silo disappear)."""
        for n, p in self.procs:
            if n == name and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM in reverse start order (SuperNodes before the SuperLink), then SIGKILL."""
        for _, p in reversed(self.procs):
            if p.poll() is None:
                _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p.pid, signal.SIGKILL)  # stragglers: superexec / clientapp children


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def superlink_args(database: str, port: int, pki: Path | None) -> list[str]:
    """SuperLink flags: TLS with the certificate of ``pki`` (:mod:`coordinator.pki`) and
    SuperNode authentication, as docker-compose.yml runs it; plain without ``pki``."""
    security = ["--insecure"] if pki is None else [
        "--ssl-ca-certfile", str(pki / "superlink" / "ca.crt"),
        "--ssl-certfile", str(pki / "superlink" / "server.pem"),
        "--ssl-keyfile", str(pki / "superlink" / "server.key"), "--enable-supernode-auth"]
    return [*security, "--disable-runtime-dependency-installation", "--database", database,
            "--port", str(port)]


def supernode_args(superlink: str, port: int, node_config: str, keys: Path | None) -> list[str]:
    """SuperNode flags: Fleet address, its own ClientApp runtime port, the silo's node config;
    TLS and its private key from ``keys`` (its ``supernode-<silo>`` folder), plain without."""
    security = ["--insecure"] if keys is None else [
        "--root-certificates", str(keys / "ca.crt"),
        "--auth-supernode-private-key", str(keys / "supernode")]
    return [*security, "--superlink", superlink, "--port", str(port), "--node-config", node_config]


def connection_toml(name: str, address: str, ca: Path | None) -> str:
    """The flwr CLI's connection ``name``: TLS with root certificate ``ca``, plain without."""
    tls = f'root-certificates = "{ca}"' if ca else "insecure = true"
    return f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{tls}\n'


def wait_for_superlink(env: dict[str, str], connection: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run([_bin("flwr"), "ls", connection], env=env, capture_output=True,
                             text=True)
        if out.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the SuperLink did not answer within {timeout_s:.0f} s:\n"
                             f"{out.stdout}{out.stderr}")
        time.sleep(3)


def register_supernodes(env: dict[str, str], connection: str, keys: dict[str, Path]) -> None:
    """Register each silo's SuperNode public key under the silo's name: the coordinator then
    accepts that name only from the node holding the key (run config ``identity``)."""
    for silo, key in keys.items():
        out = subprocess.run([_bin("flwr"), "supernode", "register", str(key), connection,
                              "--name", silo], env=env, capture_output=True, text=True)
        text = out.stdout + out.stderr
        if out.returncode != 0 and "already" not in text.lower():
            raise SystemExit(f"error: registering silo {silo}'s SuperNode key failed:\n{text}")
        print(f"silo {silo}: SuperNode key registered", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flwr_env(home: Path) -> dict[str, str]:
    """Environment for every flwr command: private FLWR_HOME, no telemetry, no per-run
    dependency installation (it would pull a CUDA torch; the venv already has everything)."""
    home.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "FLWR_HOME": str(home.resolve()), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1",
            "PATH": path}  # flwr starts flower-superlink by name: this environment's, also
    # when the launcher is called by its full path without an activated environment


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def toml_overrides(values: dict[str, object], path: Path) -> Path:
    """Run-config overrides as a TOML file for ``flwr run -c <file>``."""
    lines = [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
             for k, v in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_status(run_id: str, conn: str, env: dict[str, str]) -> str:
    out = subprocess.run([_bin("flwr"), "ls", conn, "--run-id", run_id, "--format", "json"],
                         env=env, capture_output=True, text=True, cwd=PROJECT)
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown"
    return str(runs[0]["status"]) if runs else "unknown"


def submit_and_follow(conn: str, overrides: Path, env: dict[str, str], timeout_s: float,
                      federation_config: str | None = None, on_tick=None,
                      project: Path = PROJECT) -> tuple[str, str]:
    """Submit the run of the app in ``project``, stream its log, wait for a final status;
    returns (run id, status)."""
    cmd = [_bin("flwr"), "run", str(project), conn, "--format", "json", "-c", str(overrides)]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    for attempt in range(1, START_ATTEMPTS + 1):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=PROJECT)
        try:
            run_id = str(json.loads(out.stdout)["run-id"])
            break
        except (json.JSONDecodeError, KeyError):
            if "SuperLink" in out.stdout + out.stderr and attempt < START_ATTEMPTS:
                print(f"the local SuperLink did not start in time (a busy machine?); "
                      f"retrying ({attempt + 1} of {START_ATTEMPTS})", flush=True)
                continue
            raise SystemExit(f"error: flwr run did not start a run:\n{out.stdout}\n{out.stderr}")
    print(f"run {run_id} submitted to '{conn}'", flush=True)
    follower = subprocess.Popen([_bin("flwr"), "log", run_id, conn, "--stream"], env=env,
                                cwd=project)
    deadline = time.monotonic() + timeout_s
    status, last_poll = "unknown", time.monotonic()
    try:
        while time.monotonic() < deadline:
            if on_tick is not None:
                on_tick()
            # the log stream ends with the run; poll the status then (and every 30 s anyway:
            # each `flwr ls` costs a CPU-second, too much to do every few seconds on 2 cores)
            if follower.poll() is not None or time.monotonic() - last_poll > 30:
                status, last_poll = run_status(run_id, conn, env), time.monotonic()
                if status.startswith(DONE):
                    break
            time.sleep(1.0 if follower.poll() is None else 5.0)
        else:
            subprocess.run([_bin("flwr"), "stop", run_id, conn], env=env, capture_output=True,
                           cwd=PROJECT)
            status = f"timed out after {timeout_s:.0f} s (stopped)"
    finally:
        if follower.poll() is None:
            follower.terminate()
            follower.wait(10)
    return run_id, status


def _verdict(status: str, output: Path, started: float) -> int:
    report = output / "report.json"
    fresh = report.is_file() and report.stat().st_mtime >= started
    if status == "finished:completed" and fresh:
        print(f"\nrun completed; report: {report} (and report.md)")
        _next_steps(output, json.loads(report.read_text()))
        return 0
    print(f"\nrun did not complete: status '{status}'"
          + ("" if fresh else f"; no new report in {output}")
          + "\n(the run's log above ends with the reason)", file=sys.stderr)
    return 1


def _next_steps(output: Path, report: dict) -> None:
    """Where the merged models are, and the command that gets recommendations from one."""
    learned = [name for name in report.get("learned_weights", {})]
    models = output / "models"
    if not learned or not models.is_dir():
        return
    best = max(learned, key=lambda n: report["results"].get(n, {}).get("average", {}).get("recall@10", -1))
    folder = models / safe_name(best)
    catalogues = sorted((output / "catalogues").glob("*.csv"))
    print(f"merged models: {models}/ (best on average: {folder.name})")
    if catalogues:
        print(f"recommendations: mergerec-model recommend --model {folder} "
              f"--catalogue {catalogues[0]} --history 0 1 2")


def _stop_local_superlink(home: Path) -> None:
    """Stop the background simulation SuperLink that ``flwr run . local`` started for ``home``."""
    marker = str(home.resolve() / "local-superlink")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in cmdline and marker in cmdline:
            _signal_group(int(proc.name), signal.SIGTERM)
            try:
                os.kill(int(proc.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


def run_config_keys() -> dict[str, object]:
    """The app's run-config keys and defaults (``[tool.flwr.app.config]``)."""
    with (PROJECT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["tool"]["flwr"]["app"]["config"]


def parse_override(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` with one quoting rule: VALUE is a TOML value (``'text'``, ``"text"``,
    ``3``, ``0.5``, ``true``), and a bare word is a string. Unknown keys are refused by name."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    known = run_config_keys()
    if not sep or key not in known:
        raise SystemExit(f"error: -c {item!r}: unknown run-config key {key!r}; known keys: "
                         f"{', '.join(sorted(known))}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    want = type(known[key])
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want):
        raise SystemExit(f"error: -c {item!r}: {key} expects a {want.__name__} "
                         f"(default {known[key]!r}), got {value!r}")
    return key, value


def common_overrides(args: argparse.Namespace, output: Path) -> dict[str, object]:
    values: dict[str, object] = {"output-dir": str(output), "root-dir": str(Path.cwd())}
    if args.experiment:
        values["experiment"] = str(Path(args.experiment).resolve())
    values.update(parse_override(item) for item in args.config or [])
    return values


def simulate(args: argparse.Namespace) -> int:
    """Run the app on Flower's simulation engine, one virtual SuperNode per domain."""
    cfg = _experiment(args)
    output = Path(args.output).resolve()
    home = Path(args.flwr_home).resolve()  # flwr runs in the project folder
    env = flwr_env(home)
    values = {"identity": "claimed", **common_overrides(args, output)}  # one operator, no keys
    overrides = toml_overrides(values, home / "run-overrides.toml")
    nodes = len(cfg.data.domain_names())
    started = time.time()
    try:
        _, status = submit_and_follow("local", overrides, env, args.timeout,
                                      f"num-supernodes={nodes} client-resources-num-cpus=1")
    finally:
        _stop_local_superlink(home)
    return _verdict(status, output, started)


def deploy(args: argparse.Namespace) -> int:
    """SuperLink + one SuperNode per silo on this machine, one run, then stop everything. TLS
    and SuperNode authentication unless ``--insecure``: each silo's key is registered under its
    name, and the coordinator accepts a silo's name only from the node holding that key."""
    cfg = _experiment(args)
    work = Path(args.work).resolve()
    output = Path(args.output).resolve()
    silos = _silo_specs(args, cfg, work)
    home = work / "flwr-home"
    env = flwr_env(home)
    port = free_port()
    for old in work.glob("state.db*"):  # a fresh SuperLink: with keys, a node keeps its id, and an
        old.unlink()                   # earlier deployment's node records would look online
    pki = None if args.insecure else work / "pki"
    if pki is not None:
        make_pki(pki, [s.name for s in silos], list(DEFAULT_SANS))
    (home / "config.toml").write_text(connection_toml(
        "deploy", f"127.0.0.1:{port}", None if pki is None else pki / "public" / "ca.crt"))
    procs = Processes()
    started = time.time()
    try:
        procs.start("superlink", [_bin("flower-superlink"),
                                  *superlink_args(str(work / "state.db"), port, pki)],
                    env, work / "logs" / "superlink.log")
        if pki is not None:
            wait_for_superlink(env, "deploy")
            register_supernodes(env, "deploy", {s.name: pki / "public" / f"{s.name}.pub"
                                                for s in silos})
        # all silos share this machine's cores: without a cap every silo's torch takes all of
        # them and training slows down several-fold from oversubscription
        threads = str(args.threads_per_silo or max(1, (os.cpu_count() or 1) // len(silos)))
        silo_env = {**env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        for spec in silos:
            procs.start(spec.name, [_bin("flower-supernode"), *supernode_args(
                f"127.0.0.1:{port}", free_port(), spec.node_config(args.audit_dir or ""),
                None if pki is None else pki / f"supernode-{spec.name}")],
                        silo_env, work / "logs" / f"supernode-{spec.name}.log")
        values = {"identity": "claimed" if pki is None else "registered",
                  **common_overrides(args, output), "num-silos": len(silos)}
        overrides = toml_overrides(values, work / "run-overrides.toml")
        _, status = submit_and_follow("deploy", overrides, env, args.timeout,
                                      on_tick=_killer(procs, args.kill_silo_after_train, work,
                                                      started))
    finally:
        procs.stop()
    print(f"logs: {work / 'logs'}")
    return _verdict(status, output, started)


def _killer(procs: Processes, name: str | None, work: Path, started: float):
    """Fault drill: kill silo ``name``'s SuperNode as soon as it has trained in this run (its
    run record appears), so that it disappears in the middle of the run."""
    if not name:
        return None
    runs = work / "silos" / name / "runs"

    def tick() -> None:
        if runs.is_dir() and any(p.stat().st_mtime >= started for p in runs.glob("*.json")):
            procs.kill(name)
    return tick


def _experiment(args: argparse.Namespace) -> PipelineConfig:
    try:
        return load_yaml(PipelineConfig, args.experiment) if args.experiment else PipelineConfig()
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def _silo_specs(args: argparse.Namespace, cfg: PipelineConfig, work: Path) -> list[SiloSpec]:
    """``--silo NAME=PATH`` entries, or the experiment's domains written out per silo; each
    with the settings the experiment gives that silo (as in simulation), ``--eval-only`` and
    ``--query-budget`` on top."""
    eval_only = set(args.eval_only.split(",")) if args.eval_only else set()

    def spec(name: str, path: str, fmt: str = "mergerec_json") -> SiloSpec:
        settings = simulated_silo_config(cfg, name, (work / "silos" / name).resolve())
        settings.eval_only = settings.eval_only or name in eval_only
        if args.query_budget:
            settings.policy.query_budget = args.query_budget
        return SiloSpec(path, settings, fmt)

    if args.silo:
        specs = []
        for item in args.silo:
            name, _, path = item.partition("=")
            if not path or not Path(path).exists():
                raise SystemExit(f"error: --silo {item}: expected NAME=PATH to an existing folder "
                                 f"or .tar.gz")
            specs.append(spec(name, path))
        return specs
    if cfg.data.sources:
        root = Path(args.data_dir or ".")
        return [spec(src.name, str(root / src.path), src.format) for src in cfg.data.sources]
    return [spec(d.name, str(write_mergerec_json(d, work / "data" / d.name)))
            for d in load_domains(cfg.data)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mergerec-flower", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("simulate", "deploy"):
        p = sub.add_parser(mode)
        p.add_argument("--experiment", help="YAML PipelineConfig (default: synthetic default)")
        p.add_argument("--output", default=f"results/flower-{mode}", help="report folder")
        p.add_argument("-c", "--config", action="append",
                       help="run-config override KEY=VALUE (repeatable)")
        p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds for the run")
        if mode == "simulate":
            p.add_argument("--flwr-home", default=".cache/flwr-sim", help="FLWR_HOME to use")
        else:
            p.add_argument("--work", default=".cache/deploy",
                           help="state, logs, silo work dirs and exported data")
            p.add_argument("--silo", action="append",
                           help="NAME=PATH of a silo's data (repeatable; default: the experiment's "
                                "domains, written out one folder per silo)")
            p.add_argument("--data-dir", help="base of the experiment's data source paths")
            p.add_argument("--eval-only", default="", help="comma-separated evaluation-only silos")
            p.add_argument("--query-budget", type=int, default=0,
                           help="pseudo-users each silo answers per run (0: no limit)")
            p.add_argument("--audit-dir", help="silos archive every reply they send here")
            p.add_argument("--threads-per-silo", type=int, default=0,
                           help="torch threads per silo process (0: cores // silos)")
            p.add_argument("--kill-silo-after-train", metavar="NAME",
                           help="fault drill: kill that silo's SuperNode once it has trained")
            p.add_argument("--insecure", action="store_true",
                           help="no TLS and no SuperNode authentication: any local process may "
                                "join as a silo (opt-in, for trials)")
    args = parser.parse_args(argv)
    return simulate(args) if args.mode == "simulate" else deploy(args)


if __name__ == "__main__":
    sys.exit(main())
