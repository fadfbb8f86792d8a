"""jwtfix.py: what the JWT end-to-end suite (spec/e2e/test_jwt.py) needs besides gw.py, stubs.py
and tlsfix.py. Needs python3-jwt (PyJWT 2.x) and python3-cryptography: run the suite with
/usr/bin/python3.

Keys.create(dir)      the session's key pairs, made with cryptography: RSA
                      2048, EC P-256 / P-384, Ed25519, one RSA 1024 (for `check`), and HMAC
                      secrets. keys.priv(name) is the private key object, keys.pem(name) the path
                      of its PEM public key (SubjectPublicKeyInfo, written once), keys.pem_bytes
                      (name) that file's bytes, keys.jwk(name, kid=..., alg=..., use=...) its
                      public JWK as a dict. Only three RSA 2048 keys: they cost ~0.3 s each.
b64u(data)            base64url without padding (str).
claims(**kw)          a payload: sub, exp (now + 5 min), iat, jti unique, then <kw> (a value None
                      removes the claim).
mint(alg, key, payload, kid=None, **header)      a token made by PyJWT (jwt.encode).
raw_token(header, payload, alg, key, ...)        a token assembled by hand: header and payload
                      are dicts (JSON-encoded) or str/bytes (used as they are, e.g. JSON with a
                      duplicate member), signed with <alg> and <key> over the exact bytes sent:
                      HS* with hmac/hashlib (any bytes as secret: the key-confusion token),
                      others with PyJWT's algorithm objects. signature= gives the signature bytes
                      instead (b"" for an empty one).
self_signed_der(key)  a self-signed certificate (DER) of a private key (for `x5c` headers).
make_pki(dir)         the part of tlsfix's test PKI this suite uses: ca, other_ca, localhost
                      (signed by ca, names localhost and 127.0.0.1) and rogue_localhost (the
                      same names, signed by other_ca); a tlsfix.CertStore (cert(n), key(n)).
JWKSServer(name, cert, key, jwks)   an HTTPS stub (tlsfix.HTTPSUpstream) answering every request
                      with the JSON Web Key Set it holds (set_jwks() swaps it); records every
                      request (.requests: .target, .time) and connection (.connections).
PlainJWKSServer(name, jwks)         the same over plain HTTP (a stubs.Upstream).
"""
import base64
import datetime
import hashlib
import hmac
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

import stubs
import tlsfix

# ---- keys ----

# name: kind. RSA keys are 2048 bits unless said otherwise.
KEY_KINDS = {
    "rsa": "rsa",            # static RS256 / PS256 / RS384 key of provider st
    "ec": "p256",            # static ES256
    "ec2": "p256",           # static ES256 without kid
    "ec384": "p384",         # static ES384
    "ed": "ed25519",         # static EdDSA
    "j_rsa": "rsa",          # JWKS keys (j_rsa twice: with alg RS256 and without alg)
    "j_ec": "p256",
    "j_ed": "ed25519",
    "j_ec384": "p384",
    "j_enc": "p256",
    "rot1": "p256",          # JWKS rotation: the first set, then the second
    "rot2": "ed25519",
    "flood": "p256",
    "rk1": "p256",           # provider rk (reload tests)
    "rk1_new": "p256",
    "rk2": "p256",
    "rk3": "ed25519",
    "attacker": "rsa",       # the attacker's own key
    "rsa1024": "rsa1024",
}


def _generate(kind):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


class Keys:
    def __init__(self, directory):
        self.dir = Path(directory)
        self.keys = {}

    @classmethod
    def create(cls, directory):
        k = cls(directory)
        k.dir.mkdir(parents=True, exist_ok=True)
        names = list(KEY_KINDS)
        for name in names:
            k.keys[name] = _generate(KEY_KINDS[name])
        for name in names:
            (k.dir / ("%s.pub.pem" % name)).write_bytes(k.pem_bytes(name))
        return k

    def priv(self, name):
        return self.keys[name]

    def pub(self, name):
        return self.keys[name].public_key()

    def pem_bytes(self, name):
        return self.pub(name).public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)

    def pem(self, name):
        return str(self.dir / ("%s.pub.pem" % name))

    def jwk(self, name, kid=None, alg=None, use="sig"):
        return public_jwk(self.pub(name), kid=kid, alg=alg, use=use)


def public_jwk(pub, kid=None, alg=None, use="sig"):
    """The public JWK (dict) of a cryptography public key."""
    if isinstance(pub, rsa.RSAPublicKey):
        d = RSAAlgorithm.to_jwk(pub)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        d = ECAlgorithm.to_jwk(pub)
        d = json.loads(d) if isinstance(d, str) else dict(d)
        # RFC 7518 6.2.1.2: x and y have the curve's full size; PyJWT 2.6 writes them minimal,
        # so about 1 key in 128 lost a leading zero byte and the gateway rightly refused it
        size = (pub.curve.key_size + 7) // 8
        nums = pub.public_numbers()
        d["x"], d["y"] = b64u(nums.x.to_bytes(size, "big")), b64u(nums.y.to_bytes(size, "big"))
    else:
        d = OKPAlgorithm.to_jwk(pub)
    d = json.loads(d) if isinstance(d, str) else dict(d)
    d.pop("key_ops", None)
    if kid is not None:
        d["kid"] = kid
    if alg is not None:
        d["alg"] = alg
    if use is not None:
        d["use"] = use
    return d


def load_private_pem(path):
    return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)


# ---- tokens ----

def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


_jti = [0]
_jti_lock = threading.Lock()


def claims(**kw):
    """A payload valid now: sub "user", exp in 5 minutes, iat now, a unique jti; <kw> adds or
    replaces claims, None removes one."""
    now = int(time.time())
    with _jti_lock:
        _jti[0] += 1
        n = _jti[0]
    c = {"sub": "user", "iat": now, "exp": now + 300, "jti": "t%d-%d" % (os.getpid(), n)}
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def mint(alg, key, payload=None, kid=None, **header):
    """A token made by PyJWT (typ JWT, alg <alg>, kid when given, plus <header>)."""
    h = dict(header)
    if kid is not None:
        h["kid"] = kid
    return jwt.encode(payload if payload is not None else claims(), key, algorithm=alg,
                      headers=h or None)


_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


def sign(alg, key, signing_input):
    """The JWS signature (bytes) of <signing_input> (bytes). HS*: <key> is any bytes/str."""
    if alg.startswith("HS"):
        if isinstance(key, str):
            key = key.encode()
        return hmac.new(key, signing_input, _HASHES[alg[2:]]).digest()
    return get_default_algorithms()[alg].sign(signing_input, key)


def encode_part(v):
    """base64url of a header or payload: a dict/list is JSON-encoded compactly, str/bytes as is."""
    if isinstance(v, dict) or isinstance(v, list):
        v = json.dumps(v, separators=(",", ":"))
    if isinstance(v, str):
        v = v.encode()
    return b64u(v)


def raw_token(header, payload, alg=None, key=None, signature=None):
    """header.payload.signature assembled by hand (see the module docstring)."""
    si = "%s.%s" % (encode_part(header), encode_part(payload))
    if signature is None:
        signature = sign(alg, key, si.encode())
    return "%s.%s" % (si, b64u(signature))


def split(token):
    return token.split(".")


def self_signed_der(key, cn="attacker"):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


# ---- the test PKI (a subset of tlsfix's) ----

PKI_NAMES = (("ca", "other_ca"), ("localhost", "rogue_localhost"))


def make_pki(directory):
    s = tlsfix.CertStore(directory)
    s.dir.mkdir(parents=True, exist_ok=True)
    (s.dir / "base.cnf").write_text(tlsfix._BASE_CNF)
    for i, name in enumerate(tlsfix.CERTS):
        s.serials[name] = 0x5001 + i
    with ThreadPoolExecutor(max_workers=2) as pool:
        for level in PKI_NAMES:
            list(pool.map(s._make, level))
    return s



# ---- JWKS servers ----

class _JWKSMixin:
    def _init_jwks(self, jwks):
        self.jwks = jwks if jwks is not None else {"keys": []}
        self.status_code = 200

    def set_jwks(self, jwks):
        with self.cond:
            self.jwks = jwks

    def answer(self, ctx, req):
        with self.cond:
            body = json.dumps(self.jwks).encode()
            status = self.status_code
        close = (req.header("connection") or "").lower() == "close"
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store")]
        if close:
            headers.append(("Connection", "close"))
        ctx.send(stubs.response_bytes(status, headers, None if req.method == "HEAD" else body))
        if close:
            ctx.close()
            return False
        return True

    def fetches(self):
        """The requests received so far (a copy)."""
        with self.cond:
            return list(self.requests)

    def paths(self):
        return [r.target for r in self.fetches()]


class JWKSServer(_JWKSMixin, tlsfix.HTTPSUpstream):
    def __init__(self, name, cert, key, jwks=None, **kw):
        self._init_jwks(jwks)
        super().__init__(name, cert, key, **kw)


class PlainJWKSServer(_JWKSMixin, stubs.Upstream):
    def __init__(self, name, jwks=None, **kw):
        self._init_jwks(jwks)
        super().__init__(name, **kw)
