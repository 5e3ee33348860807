//! The `proxy` filter's side of a route's `fallback` (service
//! degradation, `meshgate_core::router::fallback`): before the request is
//! sent, a cluster with no healthy endpoint sends it to the fallback
//! (the whole request, body included); after, an overflow (or an endpoint
//! set that emptied meanwhile) is answered by the fallback's direct
//! response, or by the fallback cluster when the request had no body (its
//! head was kept for that). Nothing here runs for a route without one.

use meshgate_core::cluster::Cluster;
use meshgate_core::router::ForwardPolicy;
use meshgate_core::router::fallback::{Fallback, FallbackReason, no_healthy_endpoint};
use meshgate_core::stream::{Request, Response, StreamInfo, empty_body};
use std::sync::Arc;

/// What to do before forwarding.
pub(crate) enum Before<'a> {
    /// The fallback's answer.
    Answer(Response),
    /// Forward to this cluster; `Some` head: kept to try the fallback
    /// cluster after an overflow.
    Forward(&'a Arc<Cluster>, Option<Box<http::request::Parts>>),
}

pub(crate) fn before<'a>(
    f: &'a Fallback,
    cluster: &'a Arc<Cluster>,
    req: &Request,
    info: &mut StreamInfo,
) -> Before<'a> {
    if no_healthy_endpoint(cluster) {
        Fallback::count(cluster, FallbackReason::NoHealthyEndpoint);
        return match f {
            Fallback::Direct(d) => {
                info.upstream_cluster = Some(cluster.name);
                info.upstream_cluster_metadata = cluster.metadata.clone();
                Before::Answer(d.response())
            }
            Fallback::Cluster(c) => Before::Forward(c, None),
        };
    }
    let keep = match f {
        // A bodiless request can be sent again (its head only).
        Fallback::Cluster(_) if http_body::Body::is_end_stream(req.body()) => {
            let mut head = http::Request::new(());
            *head.method_mut() = req.method().clone();
            *head.uri_mut() = req.uri().clone();
            *head.version_mut() = req.version();
            *head.headers_mut() = req.headers().clone();
            *head.extensions_mut() = req.extensions().clone();
            Some(Box::new(head.into_parts().0))
        }
        _ => None,
    };
    Before::Forward(cluster, keep)
}

/// After the exchange: the fallback's answer when the cluster overflowed
/// (or had no endpoint left), else the response as it is.
// The router's borrowed parts, passed as they are (as `routed` does).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn after(
    f: &Fallback,
    cluster: &Arc<Cluster>,
    head: Option<Box<http::request::Parts>>,
    resp: Response,
    info: &mut StreamInfo,
    policy: &ForwardPolicy,
    hash: Option<u64>,
    upstream_log: Option<&Arc<crate::access_log::AccessLogs>>,
) -> Response {
    let Some(reason) = FallbackReason::of(&resp) else {
        return resp;
    };
    match (f, head) {
        (Fallback::Direct(d), _) => {
            Fallback::count(cluster, reason);
            // The fallback answers: not meshgate's refusal any more.
            info.local_reply = None;
            d.response()
        }
        (Fallback::Cluster(c), Some(head)) => {
            Fallback::count(cluster, reason);
            info.local_reply = None;
            let req = Request::from_parts(*head, empty_body());
            // The router's `upstream_log`: the fallback cluster's tries
            // get their entries as the first cluster's did.
            let up = upstream_log.map(|_| {
                info.upstream_tries = Some(Box::default());
                crate::access_log::UpstreamHead::of(&req)
            });
            let resp = meshgate_core::forward::forward(c, req, info, policy, hash).await;
            match (upstream_log, up) {
                (Some(log), Some(head)) => log.log_tries(info, head, resp),
                _ => resp,
            }
        }
        // A request whose body was sent cannot be sent again.
        (Fallback::Cluster(_), None) => resp,
    }
}
