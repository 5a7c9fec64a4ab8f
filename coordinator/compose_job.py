"""The one-shot steps of the Docker deployment (``docker-compose.yml``).

    python -m coordinator.compose_job data --silo NAME --out /data [--experiment FILE]
    python -m coordinator.compose_job register --superlink superlink:8000 --pki /pki --silo NAME ...
    python -m coordinator.compose_job submit --superlink superlink:8000 --pki /pki --silos N
                                             --output /results [--experiment FILE] [-c KEY=VALUE ...]

    python -m coordinator.compose_job until-done --marker /job/done -- COMMAND ...

``data`` writes one silo's synthetic domain (the run's experiment, or the embedded default) as a
MergeRec-JSON folder: each silo's service makes its own data only. ``register`` registers the
SuperNodes' public keys with the SuperLink (SuperNode authentication). ``submit`` submits the
run, follows its log, checks its final status (not ``flwr run``'s exit code) and exits 0 only
when the run completed and wrote its report. Without ``--pki`` the connection is plain (the
opt-in plain mode) and writes the end-of-job marker. ``until-done`` runs a long-lived service
(SuperLink, gateway, SuperNode, executor) until that marker appears, so that a plain
``docker compose up`` ends by itself once the job is over.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.config import ConfigError, load_yaml
from common.data import write_mergerec_json
from common.experiment import load_domain
from common.settings import PipelineConfig

from .launch import (_verdict, connection_toml, flwr_env, parse_override, register_supernodes,
                     submit_and_follow, toml_overrides, wait_for_superlink)

CONNECTION = "compose"


def _env(superlink: str, pki: str | None, home: Path) -> dict[str, str]:
    env = flwr_env(home)
    (home / "config.toml").write_text(connection_toml(CONNECTION, superlink,
                                                      Path(pki) / "ca.crt" if pki else None))
    return env


def _experiment(path: str | None) -> PipelineConfig:
    try:
        return load_yaml(PipelineConfig, path) if path else PipelineConfig()
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def data(args: argparse.Namespace) -> int:
    cfg = _experiment(args.experiment)
    domain = load_domain(cfg.data, args.silo)
    write_mergerec_json(domain, Path(args.out))
    print(f"silo {args.silo}: {domain.num_users} users, {domain.num_items} items in {args.out}")
    return 0


def register(args: argparse.Namespace) -> int:
    env = _env(args.superlink, args.pki, Path("/tmp/flwr-register"))
    wait_for_superlink(env, CONNECTION)
    register_supernodes(env, CONNECTION, {silo: Path(args.pki) / f"{silo}.pub" for silo in args.silo})
    return 0


def submit(args: argparse.Namespace) -> int:
    cfg = _experiment(args.experiment)
    env = _env(args.superlink, args.pki, Path("/tmp/flwr-submit"))
    wait_for_superlink(env, CONNECTION)
    output = Path(args.output)
    values: dict[str, object] = {"output-dir": str(output), "root-dir": str(args.project),
                                 "num-silos": args.silos or len(cfg.data.domain_names())}
    if args.experiment:
        values["experiment"] = str(Path(args.experiment).resolve())
    values.update(parse_override(item) for item in args.config or [])
    overrides = toml_overrides(values, Path("/tmp/flwr-submit/run-overrides.toml"))
    started = time.time()
    try:
        _, status = submit_and_follow(CONNECTION, overrides, env, args.timeout, project=args.project)
        return _verdict(status, output, started)
    finally:
        if args.marker:
            Path(args.marker).touch()


def until_done(args: argparse.Namespace) -> int:
    """Run ``args.command`` until it exits (its code) or the job's marker appears (0)."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("error: until-done needs a command after --")
    child = subprocess.Popen(command)
    marker = Path(args.marker)
    while child.poll() is None:
        if marker.exists():
            child.send_signal(signal.SIGINT)  # Flower's processes stop cleanly on SIGINT
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
            return 0
        time.sleep(1)
    return child.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator.compose_job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("data")
    p.add_argument("--silo", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--experiment")
    p.set_defaults(fn=data)
    for name, fn in (("register", register), ("submit", submit)):
        p = sub.add_parser(name)
        p.add_argument("--superlink", default="superlink:8000")
        p.add_argument("--pki", help="the public PKI folder (ca.crt, <silo>.pub: python -m "
                                     "coordinator.pki); none: plain mode")
        p.set_defaults(fn=fn)
        if name == "register":
            p.add_argument("--silo", action="append", required=True)
        else:
            p.add_argument("--silos", type=int, default=0, help="silos to wait for (0: the experiment's)")
            p.add_argument("--output", default="/results")
            p.add_argument("--experiment")
            p.add_argument("--project", default="/app", type=Path)
            p.add_argument("-c", "--config", action="append")
            p.add_argument("--timeout", type=float, default=3 * 3600)
            p.add_argument("--marker", help="file to create when the job is over")
    p = sub.add_parser("until-done")
    p.add_argument("--marker", required=True)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(fn=until_done)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
