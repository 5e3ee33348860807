//! `rbac`: role-based access control (Envoy's `envoy.filters.http.rbac`
//! and `envoy.filters.network.rbac`). The policy engine (`engine`) is
//! shared; this module owns the HTTP stream filter and the counters, and
//! `network` the network filter.
//!
//! The HTTP filter evaluates its `rules` on the request head (with the
//! route already matched): denied, the stream gets 403 `RBAC: access
//! denied` (`LocalReason::Forbidden`; gRPC PERMISSION_DENIED). Its
//! `shadow_rules` are evaluated, counted and published in dynamic metadata
//! (`envoy.filters.http.rbac`: `shadow_effective_policy_id`,
//! `shadow_engine_result`), never enforced. A route's `per_filter_config:
//! {rbac: {rbac: <config>}}` (Envoy's `RBACPerRoute`) replaces the config
//! there; `{rbac: {}}` switches the filter off on that route.

mod engine;
pub(crate) use engine::MetadataMatch;
pub mod network;

use engine::{Context, Engine, Layer, Outcome, RequestView};
use http::HeaderValue;
use meshgate_core::BuildError;
use meshgate_core::config::parse_typed;
use meshgate_core::config::rbac::{RbacAction, RbacHttpConfig, RbacPerRouteConfig, RbacRules};
use meshgate_core::filter_chain::{ParsedConfig, RouteView};
use meshgate_core::metrics::names;
use meshgate_core::network::BuildContext;
use meshgate_core::stream::{
    FilterFuture, FilterStatus, LocalReason, Request, StreamFilter, StreamFilterFactory,
    StreamInfo, full_body, local_reply,
};
use std::sync::Arc;

/// The dynamic metadata namespace the HTTP filter publishes under.
const METADATA_NAMESPACE: &str = "envoy.filters.http.rbac";

/// A compiled engine and its counters, made once (evaluation increments a
/// handle, no label is built per stream).
struct Side {
    engine: Engine,
    /// Per policy index, then the "no policy matched" slot last.
    allowed: Box<[metrics::Counter]>,
    denied: Box<[metrics::Counter]>,
    /// The dynamic metadata keys, made once: `<stat_prefix><kind>_effective_policy_id`
    /// and `<stat_prefix><kind>_engine_result` (kind: `shadow` or
    /// `enforced`), as Envoy names them.
    policy_key: Box<str>,
    result_key: Box<str>,
}

impl Side {
    fn build(
        rules: &RbacRules,
        path: &str,
        layer: Layer,
        shadow: bool,
        listener: &str,
        stat_prefix: &str,
    ) -> Result<Self, BuildError> {
        let engine = Engine::build(rules, path, layer)?;
        let kind = if shadow { "shadow" } else { "enforced" };
        let layer_label = match layer {
            Layer::Http => "http",
            Layer::Network => "network",
        };
        let (allowed_name, denied_name) = if shadow {
            (
                names::RBAC_SHADOW_ALLOWED_TOTAL,
                names::RBAC_SHADOW_DENIED_TOTAL,
            )
        } else {
            (names::RBAC_ALLOWED_TOTAL, names::RBAC_DENIED_TOTAL)
        };
        let policies: Vec<String> = engine
            .policy_names()
            .map(str::to_string)
            .chain(std::iter::once(String::new()))
            .collect();
        let counters = |name: &'static str| -> Box<[metrics::Counter]> {
            policies
                .iter()
                .map(|p| {
                    metrics::counter!(name, "listener" => listener.to_string(), "layer" => layer_label, "stat_prefix" => stat_prefix.to_string(), "policy" => p.clone())
                })
                .collect()
        };
        Ok(Self {
            allowed: counters(allowed_name),
            denied: counters(denied_name),
            engine,
            policy_key: format!("{stat_prefix}{kind}_effective_policy_id").into(),
            result_key: format!("{stat_prefix}{kind}_engine_result").into(),
        })
    }

    /// Evaluates and counts.
    fn evaluate(&self, cx: &Context<'_>) -> Outcome {
        let o = self.engine.evaluate(cx);
        let slot = o.policy.unwrap_or(self.allowed.len() - 1);
        let counters = if o.allowed {
            &self.allowed
        } else {
            &self.denied
        };
        if let Some(c) = counters.get(slot) {
            c.increment(1);
        }
        o
    }

    fn policy_name(&self, o: &Outcome) -> &str {
        o.policy.map_or("", |i| self.engine.policy_name(i))
    }
}

/// The HTTP filter's compiled config (the filter's own, or a route's).
struct Compiled {
    rules: Option<Side>,
    shadow: Option<Side>,
}

impl Compiled {
    fn build(c: &RbacHttpConfig, path: &str, listener: &str) -> Result<Self, BuildError> {
        let join = |f: &str| meshgate_core::error::join_path(path, f);
        Ok(Self {
            rules: c
                .rules
                .as_ref()
                .map(|r| {
                    Side::build(
                        r,
                        &join("rules"),
                        Layer::Http,
                        false,
                        listener,
                        &c.rules_stat_prefix,
                    )
                })
                .transpose()?,
            shadow: c
                .shadow_rules
                .as_ref()
                .map(|r| {
                    Side::build(
                        r,
                        &join("shadow_rules"),
                        Layer::Http,
                        true,
                        listener,
                        &c.shadow_rules_stat_prefix,
                    )
                })
                .transpose()?,
        })
    }
}

/// A route's `RBACPerRoute`: `None` switches the filter off there.
struct PerRoute(Option<Compiled>);

/// Factory of the `rbac` stream filter.
pub struct RbacFactory;

impl StreamFilterFactory for RbacFactory {
    fn name(&self) -> &'static str {
        "rbac"
    }

    fn create(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn StreamFilter>, BuildError> {
        let c: RbacHttpConfig = parse_typed(config)?;
        Ok(Arc::new(Rbac {
            listener: ctx.listener.into(),
            config: Compiled::build(&c, "", ctx.listener)?,
        }))
    }
}

struct Rbac {
    listener: Box<str>,
    config: Compiled,
}

impl StreamFilter for Rbac {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request,
        info: &'a mut StreamInfo,
        route: RouteView<'a>,
    ) -> FilterFuture<'a> {
        let status = self.decide(req, info, route);
        Box::pin(std::future::ready(status))
    }

    fn parse_per_route(&self, config: &serde_json::Value) -> Result<ParsedConfig, BuildError> {
        let c: RbacPerRouteConfig = parse_typed(config)?;
        Ok(Arc::new(PerRoute(
            c.rbac
                .as_ref()
                .map(|r| Compiled::build(r, "rbac", &self.listener))
                .transpose()?,
        )))
    }
}

impl Rbac {
    fn decide(&self, req: &Request, info: &mut StreamInfo, route: RouteView<'_>) -> FilterStatus {
        let config = match route.config {
            None => &self.config,
            Some(p) => match p.downcast_ref::<PerRoute>() {
                Some(PerRoute(Some(c))) => c,
                Some(PerRoute(None)) => return FilterStatus::Continue,
                // Not ours: cannot happen, but never let a stream through
                // on a config we cannot read.
                None => {
                    return FilterStatus::Respond(local_reply(
                        info,
                        LocalReason::FilterConfigError,
                    ));
                }
            },
        };
        let (shadow, enforced) = {
            let cx = Context {
                conn: &info.connection,
                remote: info.downstream_remote_address,
                request: Some(RequestView {
                    method: req.method(),
                    uri: req.uri(),
                    headers: req.headers(),
                }),
                metadata: info.metadata(),
            };
            (
                config.shadow.as_ref().map(|s| (s, s.evaluate(&cx))),
                config.rules.as_ref().map(|s| (s, s.evaluate(&cx))),
            )
        };
        if let Some((side, o)) = shadow {
            publish(info, side, &o);
            if !o.allowed {
                tracing::debug!(policy = side.policy_name(&o), route = ?info.route, "rbac shadow rules would deny");
            }
        }
        let Some((side, o)) = enforced else {
            return FilterStatus::Continue;
        };
        publish(info, side, &o);
        if side.engine.action() == RbacAction::Log && o.policy.is_some() {
            // Envoy's hint to access loggers that a LOG policy matched.
            info.metadata_mut().set(
                "envoy.common",
                "access_log_hint",
                serde_json::Value::Bool(true),
            );
        }
        if o.allowed {
            return FilterStatus::Continue;
        }
        tracing::debug!(policy = side.policy_name(&o), route = ?info.route, "rbac denied");
        let mut resp = local_reply(info, LocalReason::Forbidden);
        *resp.body_mut() = full_body("RBAC: access denied");
        resp.headers_mut().remove(http::header::CONTENT_LENGTH);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        FilterStatus::Respond(resp)
    }
}

/// Envoy's dynamic metadata of the RBAC filter: the effective policy (when
/// one matched) and the engine's result, under the shadow or enforced keys.
fn publish(info: &mut StreamInfo, side: &Side, o: &Outcome) {
    let md = info.metadata_mut();
    if let Some(i) = o.policy {
        md.set(
            METADATA_NAMESPACE,
            &side.policy_key,
            serde_json::Value::String(side.engine.policy_name(i).to_string()),
        );
    }
    md.set(
        METADATA_NAMESPACE,
        &side.result_key,
        serde_json::Value::String(if o.allowed { "allowed" } else { "denied" }.into()),
    );
}

#[cfg(test)]
mod tests;
