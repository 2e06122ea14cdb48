"""Evaluates a corpus with Go OPA, for tests/policy_differential.rs.

Usage: python3 differential.py CORPUS.json > RESULTS.json

CORPUS.json: {"policy_paths": [...], "approvers": {env: [ids]}, "query":
"data.deploy.hipaa.allow", "now_ns": <int>, "cases": [<input>, ...]}.

RESULTS.json: {"results": [{"allow": {"defined": bool, "value": ...},
"deny": {"defined": bool, "value": ...}} | {"error": "..."}, ...],
"tests": {"data.pkg.test_x": true|false|"error: ..."}}.
`deny` is the query's sibling `deny` document, or `reasons` when deny is
undefined; time.now_ns() is fixed to now_ns with `with time.now_ns as <ns>`,
as portcullis fixes it.
"""

import json
import sys

from loader import OpaError, document, load, sibling


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        corpus = json.load(f)
    query = corpus["query"]
    now_ns = corpus["now_ns"]
    engine, _ = load(corpus["policy_paths"], corpus["approvers"])

    results = []
    for case in corpus["cases"]:
        try:
            allow = document(engine, query, case, now_ns)
            deny = document(engine, sibling(query, "deny"), case, now_ns)
            if not deny[0]:
                deny = document(engine, sibling(query, "reasons"), case, now_ns)
            results.append({
                "allow": {"defined": allow[0], "value": allow[1]},
                "deny": {"defined": deny[0], "value": deny[1]},
            })
        except OpaError as e:
            results.append({"error": str(e)})

    # The policies' own Rego tests, in OPA too.
    test_engine, tests = load(corpus["policy_paths"], corpus["approvers"], with_tests=True)
    outcomes = {}
    for rule in tests:
        try:
            defined, value = document(test_engine, rule, {}, now_ns)
            outcomes[rule] = defined and value is True
        except OpaError as e:
            outcomes[rule] = f"error: {e}"

    json.dump({"results": results, "tests": outcomes}, sys.stdout)


if __name__ == "__main__":
    main()
