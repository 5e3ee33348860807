//! examples/api-gateway.yaml, run as shipped (only its ports moved to free
//! ones and its certificate paths made absolute): JWT on /api, CORS for the
//! web origin, RBAC on a JWT claim, Basic auth on /admin, and RBAC by mTLS
//! identity on the mesh listener, with curl and tokens minted by pyjwt from
//! the example's demo key.

use meshgate_tests::curl::curl;
use meshgate_tests::*;
use std::process::Command;

/// A token signed with the example's demo key (pyjwt).
fn token(role: &str) -> String {
    let key = workspace().join("examples/certs/jwt-demo.key");
    let script = format!(
        "import jwt,time\n\
         print(jwt.encode({{'iss':'https://idp.meshgate.test','aud':'meshgate-demo','sub':'alice',\
         'role':'{role}','exp':int(time.time())+600}},open('{}').read(),algorithm='RS256',\
         headers={{'kid':'demo'}}))",
        key.display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Gateway {
    mg: Meshgate,
    gateway: u16,
    mesh: u16,
}

/// The example with its listeners on free ports (the two demo services on
/// reserved ones, since the clusters name them) and absolute cert paths.
fn start() -> Gateway {
    let text = std::fs::read_to_string(workspace().join("examples/api-gateway.yaml")).unwrap();
    let certs = workspace().join("examples/certs");
    let (orders, users) = (free_port(), free_port());
    let yaml = text
        .replace("address: 127.0.0.1:9901", "address: \"{ADMIN}\"")
        .replace("127.0.0.1:10080", "127.0.0.1:0")
        .replace("127.0.0.1:10443", "127.0.0.1:0")
        .replace("127.0.0.1:10081", &format!("127.0.0.1:{orders}"))
        .replace("127.0.0.1:10082", &format!("127.0.0.1:{users}"))
        .replace("certs/", &format!("{}/", certs.display()));
    let mg = Meshgate::start(&yaml);
    let (gateway, mesh) = (mg.listener_port("gateway"), mg.listener_port("mesh"));
    Gateway { mg, gateway, mesh }
}

#[test]
fn the_api_gateway_example_validates() {
    let p = workspace().join("examples/api-gateway.yaml");
    let (code, out, err) = run_cli(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok (4 listeners, 2 clusters)"), "{out}");
}

#[test]
fn the_api_gateway_example_authenticates_authorizes_and_answers_cors() {
    let g = start();
    let base = format!("http://127.0.0.1:{}", g.gateway);
    // Open.
    let (status, _, body) = curl(&[&format!("{base}/healthz")]);
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // /api needs a JWT.
    let (status, h, _) = curl(&[&format!("{base}/api/orders")]);
    assert_eq!(status, 401);
    assert!(
        h.get("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{h:?}"
    );
    let admin = token("admin");
    let auth = format!("authorization: Bearer {admin}");
    let (status, _, body) = curl(&["-H", &auth, &format!("{base}/api/orders")]);
    assert_eq!((status, body.as_str()), (200, "orders service\n"));
    let (status, _, _) = curl(&[
        "-H",
        "authorization: Bearer not.a.token",
        &format!("{base}/api/orders"),
    ]);
    assert_eq!(status, 401);

    // RBAC on the JWT payload: DELETE only for role=admin.
    let (status, _, _) = curl(&["-X", "DELETE", "-H", &auth, &format!("{base}/api/orders/7")]);
    assert_eq!(status, 200);
    let user = format!("authorization: Bearer {}", token("user"));
    let (status, _, body) = curl(&["-X", "DELETE", "-H", &user, &format!("{base}/api/orders/7")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("RBAC: access denied"), "{body}");
    g.mg.wait_metric(
        "meshgate_http_filter_denied_total",
        &[("filter", "rbac"), ("reason", "forbidden")],
        |v| v >= 1.0,
    );

    // CORS preflight for the web origin, answered by meshgate.
    let (status, h, _) = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "origin: https://app.meshgate.test",
        "-H",
        "access-control-request-method: DELETE",
        &format!("{base}/api/orders"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(
        h.get("access-control-allow-origin").map(String::as_str),
        Some("https://app.meshgate.test")
    );
    let (_, h, _) = curl(&[
        "-H",
        "origin: https://evil.example",
        "-H",
        &auth,
        &format!("{base}/api/orders"),
    ]);
    assert!(!h.contains_key("access-control-allow-origin"), "{h:?}");

    // /admin: Basic auth, switched on for that route only.
    let (status, h, _) = curl(&[&format!("{base}/admin/users")]);
    assert_eq!(status, 401);
    assert!(
        h.get("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "{h:?}"
    );
    let (status, _, _) = curl(&["-u", "admin:wrong", &format!("{base}/admin/users")]);
    assert_eq!(status, 401);
    let (status, _, body) = curl(&["-u", "admin:admin-demo", &format!("{base}/admin/users")]);
    assert_eq!((status, body.as_str()), (200, "users service\n"));
}

#[test]
fn the_api_gateway_examples_mesh_side_admits_the_mtls_identity_it_names() {
    let g = start();
    let certs = workspace().join("examples/certs");
    let c = |f: &str| certs.join(f).display().to_string();
    let url = format!("https://localhost:{}/users", g.mesh);
    let resolve = format!("localhost:{}:127.0.0.1", g.mesh);
    let (status, _, body) = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        &c("ca.pem"),
        "--cert",
        &c("client.pem"),
        "--key",
        &c("client.key"),
        &url,
    ]);
    assert_eq!((status, body.as_str()), (200, "users service\n"));
    g.mg.wait_metric(
        "meshgate_rbac_allowed_total",
        &[("listener", "mesh"), ("policy", "default-client")],
        |v| v >= 1.0,
    );
    // Without a client certificate the handshake is refused.
    let (status, _, _) = curl(&["--resolve", &resolve, "--cacert", &c("ca.pem"), &url]);
    assert_eq!(status, 0);
}
