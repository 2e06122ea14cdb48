"""Loads portcullis policy paths into an OPA engine the way PolicyEngine::load does.

Go OPA comes from the `opa-golib-python-bindings` wheel (module `opa_bindings`),
which scripts/test installs. Files: every `*.rego` (without `*_test.rego` unless
asked) and every `*.json` (an object merged at the root of `data`) under each
path, directories walked in sorted order, hidden entries skipped; the configured
approvers become `data.approvers`.
"""

import json
import os
import re

from opa_bindings import OpaEngine, OpaError  # noqa: F401 (re-exported)

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def policy_files(paths):
    out = []

    def walk(path):
        if os.path.isfile(path):
            out.append(path)
            return
        if not os.path.isdir(path):
            raise FileNotFoundError(path)
        for name in sorted(os.listdir(path)):
            if not name.startswith("."):
                walk(os.path.join(path, name))

    for p in paths:
        walk(p)
    return out


def load(paths, approvers, with_tests=False):
    """An OpaEngine holding the policies and data; and the test_ rules found."""
    engine = OpaEngine()
    engine.add_data({"approvers": approvers})
    tests = []
    for path in policy_files(paths):
        name = os.path.basename(path)
        if name.endswith(".rego"):
            if name.endswith("_test.rego") and not with_tests:
                continue
            with open(path, encoding="utf-8") as f:
                source = f.read()
            engine.add_policy(path, source)
            if name.endswith("_test.rego"):
                package = re.search(r"^package\s+([\w.]+)", source, re.M).group(1)
                for rule in re.findall(r"^(test_\w+)", source, re.M):
                    full = f"data.{package}.{rule}"
                    if full not in tests:
                        tests.append(full)
        elif name.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                engine.add_data(json.load(f))
    return engine, tests


def check_query(query):
    parts = query.split(".")
    if parts[0] != "data" or len(parts) < 3 or not all(IDENT.match(p) for p in parts[1:]):
        raise ValueError(f"not a rule path: {query!r}")
    return parts


def document(engine, ref, input, now_ns=None):
    """(defined, value) of `ref` over `input`, time.now_ns() fixed when now_ns is given."""
    clock = "" if now_ns is None else f" with time.now_ns as {int(now_ns)}"
    rows = engine.eval_query(f"x := {ref}{clock}", input)
    if not rows:
        return False, None
    return True, rows[0]["x"]


def sibling(query, name):
    return ".".join(check_query(query)[:-1] + [name])
