#!/usr/bin/env python3
"""Sign and send one request to keygate (keygate-v1), standard library only.

    KEYGATE_SECRET=kgs_... python3 keygate_sign.py URL KEY_ID [JSON_BODY]
"""
import base64, hashlib, hmac, secrets, sys, time, urllib.request, urllib.error
from urllib.parse import urlsplit


def keygate_headers(method: str, url: str, body: bytes, key_id: str, secret: str) -> dict:
    u = urlsplit(url)
    authority = u.netloc.lower()
    default = {"https": ":443", "http": ":80"}[u.scheme]
    if authority.endswith(default):
        authority = authority[: -len(default)]
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    nonce = secrets.token_urlsafe(16)  # 22 chars of [A-Za-z0-9_-], fresh per request
    params = (
        '("@method" "@authority" "@path" "@query" "content-digest")'
        f';created={int(time.time())};keyid="{key_id}";alg="hmac-sha256";nonce="{nonce}";tag="keygate-v1"'
    )
    base = "\n".join([
        f'"@method": {method}',
        f'"@authority": {authority}',
        f'"@path": {u.path or "/"}',
        f'"@query": ?{u.query}',
        f'"content-digest": {digest}',
        f'"@signature-params": {params}',
    ])
    mac = hmac.new(secret.encode(), base.encode(), hashlib.sha256).digest()
    return {
        "Content-Digest": digest,
        "Signature-Input": f"sig1={params}",
        "Signature": f"sig1=:{base64.b64encode(mac).decode()}:",
    }


if __name__ == "__main__":
    url, key_id = sys.argv[1], sys.argv[2]
    body = sys.argv[3].encode() if len(sys.argv) > 3 else b""
    method = "POST" if body else "GET"
    headers = keygate_headers(method, url, body, key_id, __import__("os").environ["KEYGATE_SECRET"])
    if body:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req) as r:
            print(r.status)
            print(r.read().decode())
    except urllib.error.HTTPError as e:
        print(e.code)
        print(e.read().decode())
