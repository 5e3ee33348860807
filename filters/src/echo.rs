//! `echo`: a terminal network filter that writes back every byte it reads.
//! For demos (the quickstart's demo upstream) and tests.

use meshgate_core::BuildError;
use meshgate_core::network::{
    BuildContext, BuiltFilter, Connection, NetworkFilterFactory, ServeFuture, TerminalFilter,
};
use serde::Deserialize;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoConfig {}

/// Factory of `echo`.
pub struct EchoFactory;

impl NetworkFilterFactory for EchoFactory {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<BuiltFilter, BuildError> {
        let _: EchoConfig = meshgate_core::config::parse_typed(config)?;
        if ctx.stream_transport().is_some() {
            return Err(BuildError::new(
                "",
                "echo relays bytes, and this listener's connections carry streams (QUIC)",
            ));
        }
        Ok(BuiltFilter::Terminal(Arc::new(Echo)))
    }
}

struct Echo;

impl TerminalFilter for Echo {
    fn serve(self: Arc<Self>, mut conn: Connection) -> ServeFuture {
        Box::pin(async move {
            if !conn.preface.is_empty() && conn.io.write_all(&conn.preface).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match conn.io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if conn.io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = conn.io.shutdown().await;
        })
    }
}
