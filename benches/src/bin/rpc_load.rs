//! A Dubbo 2 load generator for `benches/compare/rpc.sh`: one connection,
//! `C` calls in flight (Dubbo clients multiplex on one connection), each
//! `com.meshgate.Echo.echo("hi")` version 1.0 in Hessian 2, for `D`
//! seconds. Prints one JSON line: calls, calls/s, p50/p99 latency (ms),
//! errors (non-OK statuses).
//!
//!   rpc_load 127.0.0.1:20880 16 10

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

fn hstr(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend(s.as_bytes());
}

fn request(id: u64) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [
        "2.0.2",
        "com.meshgate.Echo",
        "1.0",
        "echo",
        "Ljava/lang/String;",
        "hi",
    ] {
        hstr(&mut body, s);
    }
    body.push(b'H');
    for s in ["path", "com.meshgate.Echo", "version", "1.0"] {
        hstr(&mut body, s);
    }
    body.push(b'Z');
    let mut f = vec![0xda, 0xbb, 0xc2, 0];
    f.extend(id.to_be_bytes());
    f.extend((body.len() as u32).to_be_bytes());
    f.extend(body);
    f
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .expect("usage: rpc_load ADDR CONCURRENCY SECONDS")
        .clone();
    let conc: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = s.into_split();
    let inflight: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(conc));
    let lat: Arc<Mutex<Vec<u32>>> = Arc::default();
    let errors = Arc::new(Mutex::new(0u64));
    let end = Instant::now() + Duration::from_secs(secs);
    let reader = {
        let (inflight, permits, lat, errors) = (
            inflight.clone(),
            permits.clone(),
            lat.clone(),
            errors.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut have = 0usize;
            loop {
                let n = match rd.read(&mut buf[have..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                have += n;
                let mut at = 0;
                while have - at >= 16 {
                    let len =
                        u32::from_be_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                    if have - at < 16 + len {
                        break;
                    }
                    let id = u64::from_be_bytes(buf[at + 4..at + 12].try_into().unwrap());
                    if buf[at + 3] != 20 {
                        *errors.lock().unwrap() += 1;
                    }
                    if let Some(t0) = inflight.lock().unwrap().remove(&id) {
                        lat.lock().unwrap().push(t0.elapsed().as_micros() as u32);
                        permits.add_permits(1);
                    }
                    at += 16 + len;
                }
                buf.copy_within(at..have, 0);
                have -= at;
                if have == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
            }
        })
    };
    let start = Instant::now();
    let mut id = 0u64;
    let mut batch = Vec::new();
    while Instant::now() < end {
        let p = permits.acquire().await.unwrap();
        p.forget();
        // send every call whose permit is free now in one write
        let mut n = 1 + permits.available_permits();
        if let Ok(more) = permits.try_acquire_many(n as u32 - 1) {
            more.forget();
        } else {
            n = 1;
        }
        batch.clear();
        {
            let mut m = inflight.lock().unwrap();
            for _ in 0..n {
                id += 1;
                m.insert(id, Instant::now());
                batch.extend(request(id));
            }
        }
        if wr.write_all(&batch).await.is_err() {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // wait for the last answers
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !inflight.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    reader.abort();
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |q: f64| {
        if l.is_empty() {
            0.0
        } else {
            l[((l.len() as f64 * q) as usize).min(l.len() - 1)] as f64 / 1000.0
        }
    };
    println!(
        "{{\"calls\":{},\"rate\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"errors\":{},\"lost\":{}}}",
        l.len(),
        l.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        errors.lock().unwrap(),
        inflight.lock().unwrap().len()
    );
}
