//! The downstream HTTP/1 codec fed arbitrary bytes from an in-memory
//! connection: it must answer or close, never panic or hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate_core::codec::{CodecFactory, ResponseFuture, StreamHandler};
use meshgate_core::network::{Connection, ConnectionInfo, DownstreamIo};
use meshgate_core::stream::{Request, StreamInfo, full_body};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ok200;

impl StreamHandler for Ok200 {
    fn handle(&self, _req: Request, _info: StreamInfo) -> ResponseFuture<'_> {
        Box::pin(async { http::Response::new(full_body(&b"ok"[..])) })
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = meshgate_protocols::http::Http1Codec
            .server(&serde_json_null())
            .unwrap();
        let (client, srv) = tokio::io::duplex(64 * 1024);
        let conn = Connection {
            io: DownstreamIo::Boxed(Box::new(srv)),
            preface: bytes::Bytes::new(),
            info: ConnectionInfo {
                id: 1,
                listener: "fuzz".into(),
                peer_addr: "127.0.0.1:1".parse().unwrap(),
                local_addr: "127.0.0.1:2".parse().unwrap(),
                server_name: None,
                filter_chain: None,
                tls: None,
                retire: Default::default(),
                proxy_protocol: None,
            },
            drain: Default::default(),
        };
        let task = tokio::spawn(server.serve(conn, Arc::new(Ok200), Default::default()));
        let (mut rd, mut wr) = tokio::io::split(client);
        let _ = wr.write_all(data).await;
        let _ = wr.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rd.read_to_end(&mut sink)).await;
        drop(rd);
        drop(wr);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
    });
});

fn serde_json_null() -> serde_json::Value {
    serde_json::Value::Null
}
