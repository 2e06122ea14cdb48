"""Builds and signs an OPA bundle with Python alone (tarfile, and the
`cryptography` package for ES256 or RS256), independently of portcullis's
own bundle code, for tests/integration/policy_bundle_differential.rs.

Usage: python3 sign.py SPEC.json OUT.tar.gz

SPEC.json: {"files": {"<path>": "<text>", ...}, "alg": "ES256" | "RS256",
"private_key": "<PEM path>"}. Every file is listed in the signature with its
SHA-256 as OPA computes it (bundle.py's structured hash for data.json and
.manifest), the JWT signed as `opa sign` signs it; paths go into the
archive with a leading `/`, as `opa build` writes them.
"""

import base64
import hashlib
import io
import json
import sys
import tarfile

from bundle import structured_hash
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    files = {name: text.encode() for name, text in spec["files"].items()}
    entries = []
    for name, data in files.items():
        base = name.rsplit("/", 1)[-1]
        if base in ("data.json", ".manifest"):
            digest = structured_hash(data.decode())
        else:
            digest = hashlib.sha256(data).hexdigest()
        entries.append({"name": name, "hash": digest, "algorithm": "SHA-256"})
    with open(spec["private_key"], "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    header = b64(json.dumps({"alg": spec["alg"], "kid": "python"}).encode())
    payload = b64(json.dumps({"files": entries, "keyid": "python", "scope": "write"}).encode())
    signing_input = f"{header}.{payload}".encode()
    if spec["alg"] == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    files[".signatures.json"] = json.dumps({"signatures": [f"{header}.{payload}.{b64(signature)}"]}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(sys.argv[2], "wb") as f:
        f.write(buf.getvalue())


if __name__ == "__main__":
    main()
