//! The method table of the transcoder: the descriptor set loaded, the
//! configured services checked, and each method's `google.api.http` rule
//! (and its `additional_bindings`) compiled into bindings matched by HTTP
//! method and path template. Every field a rule names is checked against
//! the method's input message when the config is built, so a request can
//! only fail on its own values.

use super::template::{self, Keep, Template};
use base64::Engine as _;
use http::Method;
use http::uri::PathAndQuery;
use meshgate_core::BuildError;
use meshgate_core::config::grpc_json_transcoder::{GrpcJsonTranscoderConfig, UrlUnescapeSpec};
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor};
use std::sync::Arc;

/// One gRPC method the transcoder can call.
pub(crate) struct MethodInfo {
    pub(crate) desc: MethodDescriptor,
    /// `/pkg.Service/Method`.
    pub(crate) path: PathAndQuery,
    /// The same, as a metric label.
    pub(crate) label: &'static str,
}

/// What the HTTP body maps to.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum BodyRule {
    /// `body: "*"`: the whole request message.
    All,
    /// `body: "field"`: that field (proto names).
    Field(Vec<String>),
}

/// One HTTP binding of a method.
#[derive(Clone)]
pub(crate) struct Binding {
    http_method: Method,
    pub(crate) template: Template,
    pub(crate) body: Option<BodyRule>,
    pub(crate) response_body: Option<Arc<str>>,
    pub(crate) method: Arc<MethodInfo>,
}

/// Every binding of the configured services.
pub(crate) struct Rules {
    bindings: Vec<Binding>,
    unescape: UrlUnescapeSpec,
}

/// Loads the `FileDescriptorSet` the config names.
fn pool(cfg: &GrpcJsonTranscoderConfig) -> Result<DescriptorPool, BuildError> {
    let (field, bytes) = match (&cfg.proto_descriptor, &cfg.proto_descriptor_bin) {
        (Some(p), None) => (
            "proto_descriptor",
            std::fs::read(p)
                .map_err(|e| BuildError::new("proto_descriptor", format!("{p}: {e}")))?,
        ),
        (None, Some(b)) => (
            "proto_descriptor_bin",
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| BuildError::new("proto_descriptor_bin", format!("not base64: {e}")))?,
        ),
        _ => {
            return Err(BuildError::new(
                "proto_descriptor",
                "set exactly one of proto_descriptor and proto_descriptor_bin",
            ));
        }
    };
    DescriptorPool::decode(bytes.as_slice())
        .map_err(|e| BuildError::new(field, format!("not a usable FileDescriptorSet: {e}")))
}

impl Rules {
    pub(crate) fn build(cfg: &GrpcJsonTranscoderConfig) -> Result<Self, BuildError> {
        let pool = pool(cfg)?;
        let http_ext = pool.get_extension_by_name("google.api.http");
        let mut bindings = Vec::new();
        for (i, name) in cfg.services.iter().enumerate() {
            let sp = format!("services[{i}]");
            let svc = pool.get_service_by_name(name).ok_or_else(|| {
                BuildError::new(
                    &sp,
                    format!("service '{name}' is not in the descriptor set"),
                )
            })?;
            for m in svc.methods() {
                let grpc_path = format!("/{}/{}", svc.full_name(), m.name());
                let info = Arc::new(MethodInfo {
                    path: PathAndQuery::try_from(grpc_path.as_str())
                        .map_err(|e| BuildError::new(&sp, format!("{grpc_path}: {e}")))?,
                    label: meshgate_core::stream::intern(&grpc_path),
                    desc: m.clone(),
                });
                let mp = format!("{sp}: method {}", m.full_name());
                let opts = m.options();
                match &http_ext {
                    Some(ext) if opts.has_extension(ext) => {
                        let rule = opts.get_extension(ext);
                        let Some(rule) = rule.as_message() else {
                            return Err(BuildError::new(mp, "google.api.http is not an HttpRule"));
                        };
                        add_rule(&mut bindings, rule, &info, &mp, true)?;
                    }
                    _ if cfg.auto_mapping => bindings.push(Binding {
                        http_method: Method::POST,
                        template: Template::parse(&grpc_path)
                            .map_err(|e| BuildError::new(&mp, e))?,
                        body: Some(BodyRule::All),
                        response_body: None,
                        method: info.clone(),
                    }),
                    _ => {}
                }
            }
        }
        Ok(Self {
            bindings,
            unescape: cfg.url_unescape_spec,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// The binding for a request, and its variables' values
    /// (percent-decoded; `None` for a bad escape). The most specific
    /// template (most literal segments) wins, then the first.
    pub(crate) fn find(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(&Binding, Vec<Option<String>>)> {
        let mut best: Option<(&Binding, Vec<&str>)> = None;
        for b in &self.bindings {
            if b.http_method != *method {
                continue;
            }
            if let Some(v) = b.template.matches(path)
                && best
                    .as_ref()
                    .is_none_or(|(x, _)| b.template.literals() > x.template.literals())
            {
                best = Some((b, v));
            }
        }
        let (b, raw) = best?;
        let values = raw
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let keep = match self.unescape {
                    UrlUnescapeSpec::AllCharactersExceptReserved => Keep::Reserved,
                    UrlUnescapeSpec::AllCharactersExceptSlash if b.template.multi_segment(i) => {
                        Keep::Slash
                    }
                    _ => Keep::Nothing,
                };
                template::percent_decode(r, keep, false)
            })
            .collect();
        Some((b, values))
    }
}

/// Compiles one `HttpRule` (and, at the top level, its
/// `additional_bindings`).
fn add_rule(
    out: &mut Vec<Binding>,
    rule: &DynamicMessage,
    info: &Arc<MethodInfo>,
    path: &str,
    top: bool,
) -> Result<(), BuildError> {
    let s = |f: &str| -> String {
        rule.get_field_by_name(f)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let mut pattern = None;
    for (field, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(field) {
            pattern = Some((method, s(field)));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(c) = rule.get_field_by_name("custom")
        && let Some(c) = c.as_message()
    {
        let kind = c
            .get_field_by_name("kind")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let p = c
            .get_field_by_name("path")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let m = Method::from_bytes(kind.as_bytes()).map_err(|_| {
            BuildError::new(path, format!("custom kind '{kind}' is not an HTTP method"))
        })?;
        pattern = Some((m, p));
    }
    let input = info.desc.input();
    if let Some((http_method, tpl)) = pattern {
        let template = Template::parse(&tpl).map_err(|e| BuildError::new(path, e))?;
        for v in &template.vars {
            field_path(&input, &v.field)
                .map_err(|e| BuildError::new(path, format!("path variable: {e}")))?;
        }
        let body = match s("body").as_str() {
            "" => None,
            "*" => Some(BodyRule::All),
            f => {
                let segs: Vec<String> = f.split('.').map(str::to_string).collect();
                field_path(&input, &segs)
                    .map_err(|e| BuildError::new(path, format!("body: {e}")))?;
                Some(BodyRule::Field(segs))
            }
        };
        let rb = s("response_body");
        let response_body = if rb.is_empty() {
            None
        } else {
            let out = info.desc.output();
            match out.get_field_by_name(&rb) {
                Some(_) => Some(Arc::from(rb.as_str())),
                None => {
                    return Err(BuildError::new(
                        path,
                        format!("response_body: no field '{rb}' in {}", out.full_name()),
                    ));
                }
            }
        };
        out.push(Binding {
            http_method,
            template,
            body,
            response_body,
            method: info.clone(),
        });
    } else if top {
        return Err(BuildError::new(path, "google.api.http sets no pattern"));
    }
    if let Some(list) = rule.get_field_by_name("additional_bindings")
        && let Some(list) = list.as_list()
    {
        if !top && !list.is_empty() {
            return Err(BuildError::new(
                path,
                "additional_bindings may not nest additional_bindings",
            ));
        }
        for (i, r) in list.iter().enumerate() {
            if let Some(r) = r.as_message() {
                add_rule(
                    out,
                    r,
                    info,
                    &format!("{path}: additional_bindings[{i}]"),
                    false,
                )?;
            }
        }
    }
    Ok(())
}

/// Checks a field path (proto names) of a message: every step but the
/// last a singular message field.
fn field_path(msg: &MessageDescriptor, segs: &[String]) -> Result<(), String> {
    let mut m = msg.clone();
    for (i, s) in segs.iter().enumerate() {
        let f = m
            .get_field_by_name(s)
            .ok_or_else(|| format!("no field '{}' in {}", segs.join("."), msg.full_name()))?;
        if i + 1 < segs.len() {
            match f.kind() {
                Kind::Message(next) if !f.is_list() && !f.is_map() => m = next,
                _ => {
                    return Err(format!(
                        "'{s}' in '{}' is not a message field",
                        segs.join(".")
                    ));
                }
            }
        }
    }
    Ok(())
}
