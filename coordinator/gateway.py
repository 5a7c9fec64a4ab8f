"""The Fleet gateway's nginx configuration (TLS, or plain for local trials), written at start.

    python -m coordinator.gateway [--plain] [--pki /pki] > /tmp/nginx.conf && nginx -c /tmp/nginx.conf

Silos reach ONLY the SuperLink's Fleet API (``/v1/fleet/*``): the SuperLink serves the Fleet,
Control and Runtime APIs on one port, and its Control API (start a run = ship code to every
silo) has no user authentication in open-source Flower 1.42, so it must never be reachable
from the silos. With TLS the gateway presents the SuperLink's certificate to the silos and
verifies the SuperLink's in turn. Request bodies are bounded (Flower moves arrays in 5 MiB
chunks, so 64 MiB leaves ample room). nginx runs as an unprivileged user.
"""

from __future__ import annotations

import argparse
import sys

MAX_BODY = "64m"


def nginx_conf(tls: bool, pki: str = "/pki", superlink: str = "superlink:8000",
               port: int = 9092) -> str:
    scheme = "https" if tls else "http"
    server_tls = (f"    ssl_certificate     {pki}/server.pem;\n"
                  f"    ssl_certificate_key {pki}/server.key;\n") if tls else ""
    upstream_tls = (f"      proxy_ssl_trusted_certificate {pki}/ca.crt;\n"
                    "      proxy_ssl_verify on;\n"
                    f"      proxy_ssl_name {superlink.split(':')[0]};\n") if tls else ""
    temp = "".join(f"  {kind}_temp_path /tmp/nginx-{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off;\npid /tmp/nginx.pid;\nerror_log /dev/stderr warn;\nevents {{}}\n"
            f"http {{\n  access_log off;\n{temp}"
            f"  client_max_body_size {MAX_BODY};\n  proxy_read_timeout 3600s;\n"
            f"  proxy_send_timeout 3600s;\n  server {{\n"
            f"    listen {port}{' ssl' if tls else ''};\n{server_tls}"
            f"    location /v1/fleet/ {{\n      proxy_pass {scheme}://{superlink};\n{upstream_tls}"
            "      proxy_http_version 1.1;\n      proxy_request_buffering off;\n"
            "      proxy_buffering off;\n    }\n    location / { return 403; }\n  }\n}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", action="store_true", help="no TLS (local trials only)")
    parser.add_argument("--pki", default="/pki")
    parser.add_argument("--superlink", default="superlink:8000")
    args = parser.parse_args(argv)
    sys.stdout.write(nginx_conf(not args.plain, args.pki, args.superlink))
    return 0


if __name__ == "__main__":
    sys.exit(main())
