use super::*;
use crate::rpc::RpcProtocol;
use crate::rpc::hessian_value::ValueReader;
use bytes::BytesMut;
use meshgate_core::config::http_to_rpc::HttpToRpcConfig;

fn plan(y: &str) -> HttpToRpc {
    serde_yaml::from_str::<HttpToRpcConfig>(y)
        .unwrap()
        .build("t")
        .unwrap()
}

fn inputs<'a>(
    vars: &'a [&'a str],
    query: Option<&'a str>,
    h: &'a HeaderMap,
    body: &'a [u8],
) -> Inputs<'a> {
    Inputs {
        path_vars: vars,
        query,
        headers: h,
        body,
    }
}

const USERS: &str = r#"
service: com.meshgate.Users
method: update
version: "1.0"
group: g1
path_template: /users/{id}
attachments_from_headers: [x-tenant]
params:
  - {type: long, path_param: id}
  - {type: java.lang.String, query_param: q}
  - {type: com.meshgate.User, body_field: user}
  - {type: java.util.List, body_field: tags}
  - {type: boolean, header: x-flag}
  - {type: java.lang.Integer, body_field: missing, optional: true}
"#;

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-tenant", "t1".parse().unwrap());
    h.insert("x-flag", "true".parse().unwrap());
    h
}

#[test]
fn dubbo_typed_call_reads_back() {
    let p = plan(USERS);
    let h = headers();
    let body = br#"{"user": {"name": "ann", "age": 30, "boss": {"$class": "com.meshgate.User", "name": "bo"}}, "tags": ["a", 1, 5000000000]}"#;
    let c = build_call(
        &p,
        &inputs(&["42"], Some("q=hello+w%C3%B6rld&x=1"), &h, body),
        2500,
    )
    .unwrap();
    assert_eq!(&c.head[..3], &[0xda, 0xbb, 0xc2]);
    let mut frame = BytesMut::from(&c.head[..]);
    frame.extend_from_slice(&c.body);
    let f = crate::dubbo::Dubbo
        .decode(&mut frame, 1 << 20)
        .unwrap()
        .unwrap();
    let head = crate::dubbo::Dubbo.request_head(&f).unwrap();
    assert_eq!(head.service, "com.meshgate.Users");
    assert_eq!(head.method, "update");
    for kv in [
        ("group", "g1"),
        ("x-tenant", "t1"),
        ("version", "1.0"),
        ("timeout", "2500"),
    ] {
        assert!(
            head.headers.contains(&(kv.0.into(), kv.1.into())),
            "{kv:?} in {:?}",
            head.headers
        );
    }
    let mut r = ValueReader::new(&c.body, Dialect::V2);
    for want in ["2.0.2", "com.meshgate.Users", "1.0", "update"] {
        assert_eq!(r.read_string().unwrap(), want);
    }
    assert_eq!(
        r.read_string().unwrap(),
        "JLjava/lang/String;Lcom/meshgate/User;Ljava/util/List;ZLjava/lang/Integer;"
    );
    assert_eq!(r.read_value().unwrap(), json!(42));
    assert_eq!(r.read_value().unwrap(), json!("hello wörld"));
    assert_eq!(
        r.read_value().unwrap(),
        json!({"$class": "com.meshgate.User", "name": "ann", "age": 30,
               "boss": {"$class": "com.meshgate.User", "name": "bo"}})
    );
    assert_eq!(r.read_value().unwrap(), json!(["a", 1, 5000000000i64]));
    assert_eq!(r.read_value().unwrap(), json!(true));
    assert_eq!(r.read_value().unwrap(), Value::Null);
}

#[test]
fn dubbo_generic_call() {
    let p = plan(
        r#"{service: a.Svc, method: find, generic: true,
            params: [{type: int, query_param: n}, {type: a.Pojo, body: true}]}"#,
    );
    let h = HeaderMap::new();
    let c = build_call(&p, &inputs(&[], Some("n=3"), &h, br#"{"k": "v"}"#), 1000).unwrap();
    let mut r = ValueReader::new(&c.body, Dialect::V2);
    for want in ["2.0.2", "a.Svc", "", "$invoke", GENERIC_DESC, "find"] {
        assert_eq!(r.read_string().unwrap(), want);
    }
    assert_eq!(r.read_value().unwrap(), json!(["int", "a.Pojo"]));
    assert_eq!(
        r.read_value().unwrap(),
        json!([3, {"class": "a.Pojo", "k": "v"}])
    );
    let att = r.read_value().unwrap();
    assert_eq!(att["generic"], json!("true"));
    assert!(r.at_end());
}

#[test]
fn bolt_call_reads_back() {
    let p = plan(
        r#"{protocol: bolt, service: com.meshgate.Echo, method: echo, version: "1.0",
            attachments_from_headers: [x-user],
            params: [{type: java.util.Map, body: true}, {type: double, query_param: d},
                     {type: a.Pojo, header: x-pojo}]}"#,
    );
    let mut h = HeaderMap::new();
    h.insert("x-user", "u1".parse().unwrap());
    h.insert("x-pojo", r#"{"k": 1}"#.parse().unwrap());
    let c = build_call(
        &p,
        &inputs(&[], Some("d=1.5"), &h, br#"{"a": [1, {"b": null}]}"#),
        3000,
    )
    .unwrap();
    let mut frame = BytesMut::from(&c.head[..]);
    frame.extend_from_slice(&c.body);
    let f = crate::bolt::Bolt
        .decode(&mut frame, 1 << 20)
        .unwrap()
        .unwrap();
    assert!(frame.is_empty());
    let head = crate::bolt::Bolt.request_head(&f).unwrap();
    assert_eq!(
        (head.service.as_str(), head.method.as_str()),
        ("com.meshgate.Echo", "echo")
    );
    assert!(head.headers.contains(&("x-user".into(), "u1".into())));
    let mut r = ValueReader::new(&f.body, Dialect::Draft);
    let req = r.read_value().unwrap();
    assert_eq!(req["methodName"], json!("echo"));
    assert_eq!(
        req["targetServiceUniqueName"],
        json!("com.meshgate.Echo:1.0")
    );
    assert_eq!(
        req["methodArgSigs"],
        json!(["java.util.Map", "double", "a.Pojo"])
    );
    assert_eq!(req["requestProps"], json!({"x-user": "u1"}));
    assert_eq!(r.read_value().unwrap(), json!({"a": [1, {"b": null}]}));
    assert_eq!(r.read_value().unwrap(), json!(1.5));
    // the argument's class is the message's second definition
    assert_eq!(r.read_value().unwrap(), json!({"$class": "a.Pojo", "k": 1}));
    assert!(r.at_end());
}

#[test]
fn bad_input_names_the_parameter() {
    let p = plan(USERS);
    let h = headers();
    let e = |vars: &[&str], q: Option<&str>, b: &[u8]| {
        build_call(&p, &inputs(vars, q, &h, b), 1).unwrap_err()
    };
    let ok_body: &[u8] = br#"{"user": {}, "tags": []}"#;
    let r = e(&["abc"], Some("q=x"), ok_body);
    assert_eq!((r.reason, r.status), ("bad_param", StatusCode::BAD_REQUEST));
    assert!(r.message.contains("'id'"), "{}", r.message);
    let r = e(&["99999999999999999999"], Some("q=x"), ok_body);
    assert!(
        r.message.contains("'id'") && r.message.contains("not a long"),
        "{}",
        r.message
    );
    let r = e(&["1"], None, ok_body);
    assert_eq!(r.reason, "missing_param");
    assert!(r.message.contains("'q'"));
    let r = e(&["1"], Some("q=x"), br#"{"user": "ann", "tags": []}"#);
    assert!(r.message.contains("'user'") && r.message.contains("expected an object, got a string"));
    let r = e(&["1"], Some("q=x"), br#"{"user": {}, "tags": {}}"#);
    assert!(r.message.contains("'tags'"));
    let r = e(&["1"], Some("q=x"), b"{\"user\": ");
    assert_eq!(r.reason, "bad_json");
    let r = e(&["1"], Some("q=x"), br#"[1]"#);
    assert!(r.message.contains("not a JSON object"));
    // huge numbers: past i64, past f64
    let r = e(
        &["1"],
        Some("q=x"),
        br#"{"user": {"n": 18446744073709551615}, "tags": []}"#,
    );
    assert!(r.message.contains("out of a long's range"), "{}", r.message);
    let r = e(
        &["1"],
        Some("q=x"),
        br#"{"user": {"n": 1e999}, "tags": []}"#,
    );
    assert_eq!(r.reason, "bad_json");
    // deep JSON: serde_json's own limit, then the argument depth
    let deep = format!(
        "{{\"user\": {{}}, \"tags\": {}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert_eq!(e(&["1"], Some("q=x"), deep.as_bytes()).reason, "bad_json");
    let deep = format!(
        "{{\"user\": {{}}, \"tags\": {}{}}}",
        "[".repeat(60),
        "]".repeat(60)
    );
    assert_eq!(e(&["1"], Some("q=x"), deep.as_bytes()).reason, "too_deep");
    assert_eq!(e(&["%zz"], Some("q=x"), ok_body).reason, "bad_param");
    let p = plan("{service: a.B, method: m, params: [{type: int, body_field: n}]}");
    let r = build_call(&p, &inputs(&[], None, &h, br#"{"n": 2147483648}"#), 1).unwrap_err();
    assert!(r.message.contains("not an int"), "{}", r.message);
    let r = build_call(&p, &inputs(&[], None, &h, br#"{"n": null}"#), 1).unwrap_err();
    assert!(r.message.contains("null for a int"), "{}", r.message);
}

/// Random JSON trees: written by the gateway's writer, read by its reader,
/// in both dialects, equal (a stand-in for a fuzz target, run by `cargo test`).
#[test]
fn writer_reader_round_trip_random_values() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    fn random_value(rnd: &mut dyn FnMut() -> u64, depth: usize) -> Value {
        let pick = rnd() % if depth > 4 { 6 } else { 9 };
        match pick {
            0 => Value::Null,
            1 => Value::Bool(rnd().is_multiple_of(2)),
            2 => json!((rnd() as i64) >> (rnd() % 64)),
            3 => json!(((rnd() % 2_000_001) as f64 - 1e6) / 7.0),
            4 | 5 => {
                let n = (rnd() % 40) as usize;
                let s: String = (0..n)
                    .map(|_| ['a', 'é', '𝄞', '"', '\0', 'Z', '中'][(rnd() % 7) as usize])
                    .collect();
                Value::String(s)
            }
            6 => Value::Array(
                (0..rnd() % 10)
                    .map(|_| random_value(rnd, depth + 1))
                    .collect(),
            ),
            7 => {
                let mut m = Map::new();
                for i in 0..rnd() % 6 {
                    m.insert(format!("k{i}"), random_value(rnd, depth + 1));
                }
                Value::Object(m)
            }
            _ => {
                let mut m = Map::new();
                m.insert("$class".into(), json!(format!("a.C{}", rnd() % 3)));
                for i in 0..rnd() % 4 {
                    m.insert(format!("f{i}"), random_value(rnd, depth + 1));
                }
                Value::Object(m)
            }
        }
    }
    for i in 0..3000 {
        let v = random_value(&mut rnd, 0);
        let dialect = if i % 2 == 0 {
            Dialect::V2
        } else {
            Dialect::Draft
        };
        let mut w = Writer::new(dialect);
        // two values per message: class definitions are shared
        for _ in 0..2 {
            assert!(write_dynamic(&mut w, &v, 0, false).is_ok());
        }
        let mut r = ValueReader::new(&w.buf, dialect);
        let got = r.read_value();
        assert!(
            got.is_ok(),
            "{dialect:?} {v} {:?} {got:?}",
            bytes::Bytes::copy_from_slice(&w.buf)
        );
        assert_eq!(got.unwrap(), v, "{dialect:?}");
        assert_eq!(r.read_value().unwrap(), v, "{dialect:?}");
        assert!(r.at_end());
    }
}

fn dubbo_response(status: u8, body: &[u8]) -> Vec<u8> {
    let mut h = vec![0xda, 0xbb, 0x02, status];
    h.extend_from_slice(&1u64.to_be_bytes());
    h.extend_from_slice(&(body.len() as u32).to_be_bytes());
    h
}

#[test]
fn dubbo_responses_map_to_statuses() {
    let d = |st: u8, b: &[u8]| decode_response(RpcProtocolName::Dubbo, &dubbo_response(st, b), b);
    let o = d(20, b"\x91H\x04from\x02p1\x01x\x02hiZ");
    assert_eq!(
        o,
        Outcome {
            status: StatusCode::OK,
            body: json!({"from": "p1", "x": "hi"})
        }
    );
    assert_eq!(d(20, b"\x92").body, Value::Null);
    let o = d(80, b"\x09failed: x");
    assert_eq!(o.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(o.body["message"], json!("failed: x"));
    let o = d(
        20,
        b"\x90C\x1ajava.lang.RuntimeException\x91\x0ddetailMessage\x60\x04boom",
    );
    assert_eq!(o.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(o.body["class"], json!("java.lang.RuntimeException"));
    assert_eq!(o.body["message"], json!("boom"));
    assert_eq!(d(31, b"\x01t").status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(d(60, b"\x01t").status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(d(20, b"\x91\x57").status, StatusCode::BAD_GATEWAY);
    assert_eq!(d(20, b"\x99").status, StatusCode::BAD_GATEWAY);
}

#[test]
fn mutated_responses_never_panic() {
    let seeds: [(RpcProtocolName, Vec<u8>, Vec<u8>); 2] = [
        (
            RpcProtocolName::Dubbo,
            dubbo_response(20, b""),
            b"\x91C\x11com.meshgate.User\x97\x02id\x04name\x04tags\x04born\x04boss\x05score\x06active`\xe7\x05user7z\x01a\x01bK\x00\x00\x05\xa0N_\x00\x00\x05\xdcT".to_vec(),
        ),
        (
            RpcProtocolName::Bolt,
            vec![1, 0, 0, 2, 1, 0, 0, 0, 1, 1, 0, 0],
            b"O\xbecom.alipay.sofa.rpc.core.response.SofaResponse\x94\x07isError\x08errorMsg\x0bappResponse\rresponsePropso\x90FNO\xa1com.meshgate.User\x97\x02id\x04name\x04tags\x04born\x04boss\x05score\x06activeo\x91\xe7\x05user7Vn\x02\x01a\x01bzd\x00\x00\x00\x00\x05&\\\x00ND?\xf8\x00\x00\x00\x00\x00\x00TN".to_vec(),
        ),
    ];
    for (proto, head, body) in &seeds {
        assert_eq!(decode_response(*proto, head, body).status, StatusCode::OK);
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let (proto, head, body) = &seeds[i % 2];
        let mut b = body.clone();
        for _ in 0..(rnd() % 6 + 1) {
            let at = (rnd() as usize) % b.len().max(1);
            match rnd() % 4 {
                0 if !b.is_empty() => b[at] = rnd() as u8,
                1 if !b.is_empty() => b.truncate(at),
                2 => b.insert(at.min(b.len()), rnd() as u8),
                _ if !b.is_empty() => b[at] ^= 0x80,
                _ => {}
            }
        }
        let _ = decode_response(*proto, head, &b);
    }
}

/// A provider exception as a Java Dubbo provider writes it (Hessian 2 of
/// a `Throwable`): its class definition with `detailMessage`, `cause`
/// pointing back at the exception itself (a reference to the object being
/// read), a typed `stackTrace` array of `StackTraceElement` objects and an
/// empty `suppressedExceptions` list. The answer is a 500 naming the class
/// with the message; the cycle does not recurse.
#[test]
fn java_exceptions_keep_their_class_and_message() {
    fn s(x: &str) -> Vec<u8> {
        let mut v = if x.len() < 32 {
            vec![x.len() as u8]
        } else {
            vec![0x30, x.len() as u8]
        };
        v.extend_from_slice(x.as_bytes());
        v
    }
    let mut b = vec![0x90]; // RESPONSE_WITH_EXCEPTION
    b.push(b'C');
    b.extend(s("com.example.UserNotFoundException"));
    b.push(0x94);
    for f in [
        "detailMessage",
        "cause",
        "stackTrace",
        "suppressedExceptions",
    ] {
        b.extend(s(f));
    }
    b.push(0x60);
    b.extend(s("no user 5"));
    b.extend([0x51, 0x90]); // cause: the exception itself (ref 0)
    b.push(0x71); // a typed list of one
    b.extend(s("[java.lang.StackTraceElement"));
    b.push(b'C');
    b.extend(s("java.lang.StackTraceElement"));
    b.push(0x94);
    for f in ["declaringClass", "methodName", "fileName", "lineNumber"] {
        b.extend(s(f));
    }
    b.push(0x61);
    for f in ["com.example.UserSvc", "getUser", "UserSvc.java"] {
        b.extend(s(f));
    }
    b.push(0x90 + 42);
    b.push(0x78); // suppressedExceptions: an empty list
    let o = decode_response(RpcProtocolName::Dubbo, &dubbo_response(20, &b), &b);
    assert_eq!(o.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", o.body);
    assert_eq!(o.body["class"], json!("com.example.UserNotFoundException"));
    assert_eq!(o.body["message"], json!("no user 5"));
    assert_eq!(o.body["error"], json!("provider_exception"));
}
