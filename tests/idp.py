"""A small OpenID Connect provider for the tests: keys generated here, its discovery document
and JWKS served over HTTP on loopback (as Keycloak serves them), tokens signed on demand.

    with TestIdP() as idp:
        token = idp.token(sub="dr.kim", clinicId="A", roles=["doctor"])
        idp.rotate()          # a new signing key; the old one leaves the JWKS
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REALM = "/realms/dental"
AUDIENCE = "pacs-gateway"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    def __init__(self, alg: str = "RS256", kid: str | None = None):
        self.alg = alg
        self.kid = kid or uuid.uuid4().hex[:12]
        self.private = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg.startswith(("RS", "PS"))
                        else ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        return {**algorithm.to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid, "use": "sig",
                "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


class TestIdP:
    """Discovery at ``{issuer}/.well-known/openid-configuration``, keys at ``{issuer}/protocol/openid-connect/certs``."""

    __test__ = False  # not a test class

    def __init__(self, *algs: str):
        self.keys = [Key(alg) for alg in (algs or ("RS256", "ES256"))]
        self.extra_jwks: list[dict] = []  # served besides the keys (e.g. an HMAC "oct" key)
        self.jwks_requests = 0
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path == REALM + "/.well-known/openid-configuration":
                    body = {"issuer": idp.issuer, "jwks_uri": idp.jwks_url,
                            "authorization_endpoint": idp.issuer + "/protocol/openid-connect/auth"}
                elif self.path == REALM + "/protocol/openid-connect/certs":
                    idp.jwks_requests += 1
                    body = {"keys": [k.jwk() for k in idp.keys] + idp.extra_jwks}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.issuer = self.url + REALM
        self.jwks_url = self.issuer + "/protocol/openid-connect/certs"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "TestIdP":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def rotate(self, alg: str = "RS256", *, keep_old: bool = False) -> Key:
        """A new signing key first in the JWKS; the old ones leave it unless ``keep_old``."""
        key = Key(alg)
        self.keys = [key, *self.keys] if keep_old else [key]
        return key

    def claims(self, *, sub: str = "dr.kim", clinic: str | None = "A", roles=("doctor",), client_roles=(),
               ttl: int = 300, **extra) -> dict:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now, "exp": now + ttl,
                  "azp": AUDIENCE, "realm_access": {"roles": list(roles)},
                  "resource_access": {AUDIENCE: {"roles": list(client_roles)}}, "preferred_username": sub}
        if clinic is not None:
            claims["clinicId"] = clinic
        claims.update(extra)
        return claims

    def sign(self, claims: dict, key: Key | None = None, *, headers: dict | None = None) -> str:
        key = key or self.keys[0]
        return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})})

    def token(self, key: Key | None = None, **kw) -> str:
        return self.sign(self.claims(**kw), key)


# --- hand-made attack tokens (PyJWT refuses to make them) -----------------------------------

def unsigned_token(claims: dict, kid: str) -> str:
    """``alg: none``: no signature at all."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def hmac_token(claims: dict, secret: bytes, kid: str) -> str:
    """HS256 "signed" with ``secret``: with a public key as secret, the key-confusion attack."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def tampered_token(token: str, **changes) -> str:
    """The token with claims changed and its original signature kept (a forgery)."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
