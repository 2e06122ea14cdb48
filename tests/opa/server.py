"""A local OPA Data API for tests/policy_opa_mode.rs, answered by Go OPA.

Usage: python3 server.py --policies DIR [--policies DIR ...]
                         --approvers '{"production": ["octocat"]}' [--now-ns NS]

Listens on 127.0.0.1 on a free port and prints `listening <port>` on stdout.
POST /v1/data/<path> with {"input": ...} answers {"result": <value>} or {}
when the document is undefined, as OPA does; an evaluation error is a 500.
With --now-ns, time.now_ns() is fixed (a real OPA server has no such switch;
the tests use it to compare with portcullis's fixed clock).
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loader import IDENT, OpaError, document, load


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--policies", action="append", required=True)
    parser.add_argument("--approvers", default="{}")
    parser.add_argument("--now-ns", type=int, default=None)
    args = parser.parse_args()
    engine, _ = load(args.policies, json.loads(args.approvers))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            prefix = "/v1/data/"
            path = self.path.split("?", 1)[0]
            parts = path[len(prefix):].split("/") if path.startswith(prefix) else []
            if not parts or not all(IDENT.match(p) for p in parts):
                return self.answer(404, {"code": "resource_not_found", "message": "no such path"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return self.answer(400, {"code": "invalid_parameter", "message": "body is not JSON"})
            try:
                defined, value = document(engine, "data." + ".".join(parts), body.get("input"), args.now_ns)
            except OpaError as e:
                return self.answer(500, {"code": "internal_error", "message": str(e)})
            self.answer(200, {"result": value} if defined else {})

        def answer(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
