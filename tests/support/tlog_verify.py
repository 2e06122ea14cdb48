"""An independent verifier for portcullis's transparency log and receipts.

Written from the specifications, not from portcullis's code: RFC 9162
sections 2.1.3.2 (inclusion) and 2.1.4.2 (consistency) with RFC 6962
hashing, C2SP signed-note and tlog-checkpoint, and DSSE v1. Ed25519 comes
from Python's `cryptography` package.

Reads one JSON object on stdin:
  {"public_key": base64 raw Ed25519 key, "origin": str,
   "checkpoints": [note, ...],
   "inclusions": [{"line": str, "index": n, "size": n, "hashes": [hex]}],
   "consistencies": [{"from": note, "to": note, "hashes": [hex]}],
   "receipts": [{"envelope": {...}, "expect": "PASSED" | "FAILED"}],
   "jwks": {...}}
Prints "verified: ..." and exits 0, or prints what failed and exits 1.
"""

import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(msg):
    print("FAILED: " + msg)
    sys.exit(1)


def leaf(line: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + line).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index, size, leaf_hash, proof, root):
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(size1, size2, root1, root2, proof):
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0 or size1 > size2:
        return False
    if size1 & (size1 - 1) == 0:
        proof = [root1] + proof
    if not proof:
        return False
    fn, sn = size1 - 1, size2 - 1
    while fn % 2 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


def open_checkpoint(note: str, origin: str, name: str, key: bytes):
    """C2SP signed-note: text, blank line, signature lines."""
    text, _, sigs = note.partition("\n\n")
    text += "\n"
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + key).digest()[:4]
    pub = Ed25519PublicKey.from_public_bytes(key)
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            fail("signature line without an em dash: %r" % line)
        signer, blob = line[2:].split(" ", 1)
        raw = base64.b64decode(blob)
        if signer == name and raw[:4] == key_id:
            pub.verify(raw[4:], text.encode())  # raises on a bad signature
            lines = text.splitlines()
            if len(lines) != 3 or lines[0] != origin:
                fail("not a checkpoint of %s: %r" % (origin, text))
            return int(lines[1]), base64.b64decode(lines[2])
    fail("no signature by the key in %r" % note)


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def main():
    req = json.load(sys.stdin)
    key = base64.b64decode(req["public_key"])
    origin = req["origin"]
    done = []
    if "jwks" in req:
        xs = [base64.urlsafe_b64decode(k["x"] + "==") for k in req["jwks"]["keys"]]
        if key not in xs:
            fail("the JWKS does not hold the signing key")
        done.append("jwks")
    roots = {}
    for note in req.get("checkpoints", []):
        size, root = open_checkpoint(note, origin, origin, key)
        roots[size] = root
    done.append("%d checkpoint(s)" % len(req.get("checkpoints", [])))
    for inc in req.get("inclusions", []):
        size = inc["size"]
        if size not in roots:
            fail("no checkpoint of size %d" % size)
        proof = [bytes.fromhex(h) for h in inc["hashes"]]
        if not verify_inclusion(inc["index"], size, leaf(inc["line"].encode()), proof, roots[size]):
            fail("inclusion of leaf %d in %d" % (inc["index"], size))
    done.append("%d inclusion proof(s)" % len(req.get("inclusions", [])))
    for con in req.get("consistencies", []):
        s1, r1 = open_checkpoint(con["from"], origin, origin, key)
        s2, r2 = open_checkpoint(con["to"], origin, origin, key)
        proof = [bytes.fromhex(h) for h in con["hashes"]]
        if not verify_consistency(s1, s2, r1, r2, proof):
            fail("consistency %d -> %d" % (s1, s2))
    done.append("%d consistency proof(s)" % len(req.get("consistencies", [])))
    pub = Ed25519PublicKey.from_public_bytes(key)
    for rec in req.get("receipts", []):
        env = rec["envelope"]
        payload = base64.b64decode(env["payload"])
        if env["payloadType"] != "application/vnd.in-toto+json":
            fail("payloadType %r" % env["payloadType"])
        pub.verify(base64.b64decode(env["signatures"][0]["sig"]), pae(env["payloadType"], payload))
        st = json.loads(payload)
        if st["_type"] != "https://in-toto.io/Statement/v1":
            fail("statement type %r" % st["_type"])
        if st["predicateType"] != "https://slsa.dev/verification_summary/v1":
            fail("predicate type %r" % st["predicateType"])
        got = st["predicate"]["verificationResult"]
        if got != rec["expect"]:
            fail("receipt says %s, expected %s" % (got, rec["expect"]))
    done.append("%d receipt(s)" % len(req.get("receipts", [])))
    print("verified: " + ", ".join(done))


if __name__ == "__main__":
    main()
