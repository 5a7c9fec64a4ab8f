"""``mergerec-model``: use a model package.

    mergerec-model info --model DIR
    mergerec-model recommend --model DIR --catalogue FILE --history ITEM [ITEM ...] [--k 10]
                             [--exclude-history | --keep-history] [--json]
    mergerec-model recommend --model DIR --catalogue FILE --histories FILE.jsonl [--json]
    mergerec-model serve --model DIR [--model DIR ...] --catalogue NAME=FILE [...] [--port 8080]
    mergerec-model compare --catalogue DOMAIN --model NAME=DIR [...] [--weights NAME=FILE ...]
                           [--users 20] --output report.md

``--histories`` reads one JSON list of items per line. A history's items are ids, titles or
item indices, oldest first. Errors (unknown item, bad package, bad catalogue) end with exit
code 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data import DataError
from .package import PackageError, read_info
from .recommend import Recommender, UnknownItem


def _table(histories: list[list[str]], recs) -> str:  # type: ignore[no-untyped-def]
    lines = []
    for history, items in zip(histories, recs):
        lines.append(f"history: {' → '.join(map(str, history))}")
        lines.append(f"{'rank':>4}  {'score':>7}  {'item':<14}  text")
        lines += [f"{r.rank:>4}  {r.score:7.4f}  {r.item_id:<14}  {r.text[:80]}" for r in items]
        lines.append("")
    return "\n".join(lines)


def read_histories(path: Path) -> list[list[str | int]]:
    """One JSON list of item ids, titles or indices per non-empty line; errors name the line."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            history = json.loads(line)
        except json.JSONDecodeError:
            history = None
        if not isinstance(history, list) or not all(
                isinstance(e, (str, int)) and not isinstance(e, bool) for e in history):
            raise ValueError(f"{path}, line {n}: expected a JSON list of item ids, titles or "
                             f"indices, got {line.strip()[:60]!r}")
        out.append(history)
    return out


def cmd_recommend(args: argparse.Namespace) -> int:
    histories = read_histories(Path(args.histories)) if args.histories else [args.history]
    rec = Recommender.open(args.model, args.catalogue)
    recs = rec.recommend(histories, args.k, args.exclude)
    path = "its new-domain path" if rec.route == "new domain" else "its own weights"
    print(f"catalogue {rec.catalogue.name}: {rec.route}, served by {path}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"history": h, "items": [vars(r) for r in items]}
                          for h, items in zip(histories, recs)], indent=2, ensure_ascii=False))
    else:
        print(_table(histories, recs))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = read_info(args.model)
    print(json.dumps({k: v for k, v in vars(info).items() if k != "model"}
                     | {"model": vars(info.model)}, indent=2, ensure_ascii=False, default=str))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import run_server

    catalogues = dict(_pair(c, "--catalogue") for c in args.catalogue)
    if not args.body_timeout > 0:
        raise SystemExit(f"error: --body-timeout must be a positive number of seconds, got "
                         f"{args.body_timeout}")
    run_server(args.model, catalogues, args.host, args.port, args.max_batch, args.body_timeout)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_report

    text = compare_report(dict(_pair(m, "--model") for m in args.model),
                          dict(_pair(w, "--weights") for w in args.weights or []),
                          args.catalogue, args.users, args.split, args.seed)
    Path(args.output).write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


def _pair(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise ValueError(f"{flag} expects NAME=PATH, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mergerec-model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("recommend", help="top-k items for one or more histories")
    p.add_argument("--model", required=True, help="model package folder")
    p.add_argument("--catalogue", required=True, help="domain file or item table")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--history", nargs="+", help="item ids or titles, oldest first")
    group.add_argument("--histories", help="JSON lines, one list of items per line")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--exclude-history", dest="exclude", action="store_true", default=None)
    p.add_argument("--keep-history", dest="exclude", action="store_false")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(fn=cmd_recommend)
    p = sub.add_parser("info", help="what a package holds")
    p.add_argument("--model", required=True)
    p.set_defaults(fn=cmd_info)
    p = sub.add_parser("serve", help="HTTP recommendation service")
    p.add_argument("--model", required=True, action="append", help="package folder (repeatable)")
    p.add_argument("--catalogue", required=True, action="append", help="NAME=FILE (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-batch", type=int, default=256, help="histories per batch request")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a request body may take to arrive (408 after)")
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("compare", help="side-by-side top-10 of several models on one domain")
    p.add_argument("--catalogue", required=True, help="the domain file (run where it lives)")
    p.add_argument("--model", action="append", required=True, help="NAME=package folder")
    p.add_argument("--weights", action="append", help="NAME=weights.safetensors (architecture "
                                                     "of the first package)")
    p.add_argument("--users", type=int, default=20, help="sampled test users")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="compare.md")
    p.set_defaults(fn=cmd_compare)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (PackageError, DataError, UnknownItem, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, UnknownItem) else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
