//! A JOSE peer for the `jwt_authn` end-to-end tests, in Python with
//! `pyjwt` and `cryptography`: it makes RSA, EC P-256, Ed25519 and HMAC
//! keys, mints tokens on request (one JSON line in, one token out), and
//! serves on a port the kernel gives (port 0) both the JWKS (`/jwks`,
//! switchable to `down` or `garbage` with `/mode/<m>`, fetches counted at
//! `/count`) and an echo upstream (any other path answers the request's
//! headers as JSON), so a test sees exactly what reached the upstream.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const PEER: &str = r#"
import base64, json, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
import jwt
from jwt.algorithms import RSAAlgorithm, ECAlgorithm, OKPAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa, ec, ed25519

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
ed_key = ed25519.Ed25519PrivateKey.generate()
hs_secret = b"meshgate-test-hmac-secret-0123456789"
keys = {"rsa1": rsa_key, "ec1": ec_key, "ed1": ed_key, "hs1": hs_secret}

def pub(alg_cls, key, kid, alg):
    j = json.loads(alg_cls.to_jwk(key.public_key()))
    j["kid"] = kid
    j["alg"] = alg
    return j

jwks = {"keys": [
    pub(RSAAlgorithm, rsa_key, "rsa1", "RS256"),
    pub(ECAlgorithm, ec_key, "ec1", "ES256"),
    pub(OKPAlgorithm, ed_key, "ed1", "EdDSA"),
    {"kty": "oct", "kid": "hs1", "alg": "HS256",
     "k": base64.urlsafe_b64encode(hs_secret).decode().rstrip("=")},
]}
state = {"mode": "ok", "count": 0}
lock = threading.Lock()

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def send(self, code, body, ctype="application/json"):
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/mode/"):
            state["mode"] = self.path[len("/mode/"):]
            return self.send(200, b"ok", "text/plain")
        if self.path == "/count":
            return self.send(200, str(state["count"]).encode(), "text/plain")
        if self.path.startswith("/jwks"):
            with lock:
                state["count"] += 1
            m = state["mode"]
            if m == "down":
                return self.send(503, b"down", "text/plain")
            if m == "garbage":
                return self.send(200, b"{not json at all", "text/plain")
            return self.send(200, json.dumps(jwks).encode())
        body = {"path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()}}
        self.send(200, json.dumps(body).encode())

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
print(json.dumps({"port": srv.server_address[1], "jwks": json.dumps(jwks)}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    alg = req["alg"]
    kid = req.get("kid")
    headers = req.get("headers", {})
    if kid:
        headers["kid"] = kid
    key = keys.get(req.get("key", kid or ""), None)
    if alg == "none":
        tok = jwt.encode(req["claims"], None, algorithm="none", headers=headers)
    else:
        tok = jwt.encode(req["claims"], key, algorithm=alg, headers=headers)
    print(tok, flush=True)
"#;

/// The running Python peer; killed on drop.
pub struct JwtPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// JWKS and echo server.
    pub addr: SocketAddr,
    /// The public JWKS (JSON text) of the peer's keys: kids `rsa1`
    /// (RS256), `ec1` (ES256), `ed1` (EdDSA), `hs1` (HS256).
    pub jwks: String,
}

impl JwtPeer {
    pub fn start() -> Self {
        let mut child = Command::new("python3")
            .args(["-c", PEER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with pyjwt and cryptography");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let hello: serde_json::Value = serde_json::from_str(&line).expect("peer hello");
        let port = hello["port"].as_u64().unwrap() as u16;
        Self {
            child,
            stdin,
            stdout,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            jwks: hello["jwks"].as_str().unwrap().to_string(),
        }
    }

    /// A token signed by pyjwt: `alg` with key `kid` (which also goes in
    /// the header), `claims` as given.
    pub fn mint(&mut self, alg: &str, kid: &str, claims: serde_json::Value) -> String {
        self.mint_with(serde_json::json!({"alg": alg, "kid": kid, "claims": claims}))
    }

    /// A token from a raw request: `{alg, kid?, key?, claims, headers?}`
    /// (`key` signs when the header's `kid` names another key).
    pub fn mint_with(&mut self, req: serde_json::Value) -> String {
        writeln!(self.stdin, "{req}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// `ok`, `down` (503) or `garbage` JWKS answers from now on.
    pub fn set_mode(&self, mode: &str) {
        let (s, _) = crate::http_get(self.addr, &format!("/mode/{mode}")).unwrap();
        assert_eq!(s, 200);
    }

    /// JWKS requests served so far.
    pub fn jwks_fetches(&self) -> u64 {
        let (_, body) = crate::http_get(self.addr, "/count").unwrap();
        body.trim().parse().unwrap()
    }
}

impl Drop for JwtPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since the epoch (for `exp`, `nbf`).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
