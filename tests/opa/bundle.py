"""Reads an OPA bundle the way OPA does and evaluates it with Go OPA, for
tests/integration/policy_bundle_differential.rs.

Usage: python3 bundle.py CORPUS.json > RESULTS.json

CORPUS.json: {"bundle": "<path to .tar.gz>", "public_key": "<PEM>",
"approvers": {env: [ids]}, "query": "data.pkg.allow", "now_ns": <int>,
"cases": [<input>, ...]}.

RESULTS.json: {"revision": <manifest revision>, "roots": [...],
"signature": {"jwt_verified": bool, "alg": "...", "listed": [names],
"mismatched": [names], "unlisted": [names]},
"results": [{"allow": {"defined", "value"}, "deny": {"defined", "value"}} | {"error": "..."}]}.

The signature's JWT is verified by Go OPA's own io.jwt.verify_es256 /
io.jwt.verify_rs256 and decoded by io.jwt.decode; a .rego file's hash is
Go OPA's crypto.sha256 of its text; a data.json or .manifest file's hash is
OPA's structured hash (bundle/hash.go: keys sorted, numbers as written,
Go's JSON string encoding without HTML escaping), ported here. Data files
are placed by their directory (a/b/data.json is data.a.b) with add_data's
path, as OPA's bundle loader does.
"""

import hashlib
import io
import json
import sys
import tarfile

from loader import OpaError, document, sibling
from opa_bindings import OpaEngine


def go_string(s):
    out = ['"']
    for c in s:
        o = ord(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif c == "\b":
            out.append("\\b")
        elif c == "\f":
            out.append("\\f")
        elif o < 0x20:
            out.append("\\u%04x" % o)
        elif c in "\u2028\u2029":
            out.append("\\u%04x" % o)
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


class Number(str):
    """A JSON number kept as written, as Go's json.Number."""


def walk(v, out):
    if isinstance(v, dict):
        out.append("{")
        for i, k in enumerate(sorted(v, key=lambda k: k.encode())):
            if i:
                out.append(",")
            out.append(go_string(k))
            out.append(":")
            walk(v[k], out)
        out.append("}")
    elif isinstance(v, list):
        out.append("[")
        for i, e in enumerate(v):
            if i:
                out.append(",")
            walk(e, out)
        out.append("]")
    elif isinstance(v, Number):
        out.append(str(v))
    elif isinstance(v, str):
        out.append(go_string(v))
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif v is None:
        out.append("null")
    else:
        raise TypeError(type(v))


def structured_hash(text):
    value = json.loads(text, parse_int=Number, parse_float=Number)
    out = []
    walk(value, out)
    return hashlib.sha256("".join(out).encode()).hexdigest()


def opa_value(engine, expr, inp):
    rows = engine.eval_query(f"x := {expr}", inp)
    return rows[0]["x"] if rows else None


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        corpus = json.load(f)
    files = {}
    with tarfile.open(corpus["bundle"], "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[member.name.lstrip("/")] = tar.extractfile(member).read()

    tools = OpaEngine()
    signature = None
    if ".signatures.json" in files:
        token = json.loads(files.pop(".signatures.json"))["signatures"][0]
        header, payload, _ = opa_value(tools, "io.jwt.decode(input.t)", {"t": token})
        alg = header["alg"]
        verify = {"ES256": "io.jwt.verify_es256", "RS256": "io.jwt.verify_rs256"}[alg]
        verified = opa_value(tools, f"{verify}(input.t, input.k)", {"t": token, "k": corpus["public_key"]})
        listed = {f["name"].lstrip("/"): f for f in payload["files"]}
        mismatched = []
        for name, data in files.items():
            entry = listed.get(name)
            if entry is None:
                continue
            base = name.rsplit("/", 1)[-1]
            if base in ("data.json", ".manifest"):
                actual = structured_hash(data.decode())
            else:
                actual = opa_value(tools, "crypto.sha256(input.s)", {"s": data.decode()})
            if entry["algorithm"] != "SHA-256" or actual != entry["hash"]:
                mismatched.append(name)
        signature = {
            "jwt_verified": verified is True,
            "alg": alg,
            "listed": sorted(listed),
            "mismatched": sorted(mismatched),
            "unlisted": sorted(n for n in files if n not in listed),
        }

    manifest = json.loads(files.get(".manifest", b"{}"))
    engine = OpaEngine()
    engine.add_data({"approvers": corpus["approvers"]})
    for name in sorted(files):
        base = name.rsplit("/", 1)[-1]
        if name.endswith(".rego"):
            engine.add_policy(name, files[name].decode())
        elif base == "data.json":
            path = ".".join(name.split("/")[:-1])
            engine.add_data(json.loads(files[name]), path)

    query = corpus["query"]
    results = []
    for case in corpus["cases"]:
        try:
            allow = document(engine, query, case, corpus["now_ns"])
            deny = document(engine, sibling(query, "deny"), case, corpus["now_ns"])
            results.append({
                "allow": {"defined": allow[0], "value": allow[1]},
                "deny": {"defined": deny[0], "value": deny[1]},
            })
        except OpaError as e:
            results.append({"error": str(e)})
    json.dump({
        "revision": manifest.get("revision"),
        "roots": manifest.get("roots", [""]),
        "signature": signature,
        "results": results,
    }, sys.stdout)


if __name__ == "__main__":
    main()
