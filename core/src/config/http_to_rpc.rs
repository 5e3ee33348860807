//! `route.http_to_rpc`: the config of the HTTP/JSON to Dubbo 2 / Bolt
//! translation a route can carry (meshgate's own; Envoy has no such route
//! action, so it is YAML only), and its build into an [`HttpToRpc`] plan:
//! the path template compiled, every parameter's Java type and source
//! checked. The plan is pure data; `meshgate_protocols::rpc::http_gateway`
//! executes it (encodes the call, decodes the result).

use crate::error::BuildError;
use serde::{Deserialize, Serialize};

/// The RPC protocol the call is made in (the cluster must speak it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcProtocolName {
    #[default]
    Dubbo,
    Bolt,
}

impl RpcProtocolName {
    pub fn label(self) -> &'static str {
        match self {
            Self::Dubbo => "dubbo",
            Self::Bolt => "bolt",
        }
    }
}

fn default_max_body() -> usize {
    1 << 20
}

/// `route.http_to_rpc`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToRpcConfig {
    /// `dubbo` (default) or `bolt`.
    #[serde(default)]
    pub protocol: RpcProtocolName,
    /// The interface, e.g. `com.example.UserService`.
    pub service: String,
    /// The method to call.
    pub method: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Dubbo's service group (Bolt has none: refused there).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Dubbo's generic invocation (`$invoke(method, types, args)`) instead
    /// of a typed call.
    #[serde(default)]
    pub generic: bool,
    /// `/users/{id}`: names path segments as parameters; the request path
    /// (without its query) must match it, else 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    /// The call's parameters, in order.
    #[serde(default)]
    pub params: Vec<ParamConfig>,
    /// Request headers sent as attachments (Dubbo attachments, Bolt header
    /// map entries), under the header's lowercase name.
    #[serde(default)]
    pub attachments_from_headers: Vec<String>,
    /// Largest request body read (413 past it).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

/// One parameter: its Java type and exactly one source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParamConfig {
    /// `java.lang.String`, `int`, `long`, `double`, `boolean` (and their
    /// boxed classes), `java.util.List`, `java.util.Map`, or a POJO's
    /// class name.
    #[serde(rename = "type")]
    pub type_: String,
    /// A `{name}` of `path_template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A field of the JSON body (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_field: Option<String>,
    /// The whole JSON body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body: bool,
    /// A missing value is sent as null (a primitive type cannot be
    /// optional). Default: a missing value is a 400.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// A parameter's Java type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JavaType {
    String,
    /// `int` (`boxed`: `java.lang.Integer`).
    Int {
        boxed: bool,
    },
    Long {
        boxed: bool,
    },
    Double {
        boxed: bool,
    },
    Boolean {
        boxed: bool,
    },
    List,
    Map,
    /// A POJO by class name.
    Object(String),
}

impl JavaType {
    /// Parses a declared type; `None` for what is not a Java class name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "java.lang.String" | "String" => Self::String,
            "int" => Self::Int { boxed: false },
            "java.lang.Integer" => Self::Int { boxed: true },
            "long" => Self::Long { boxed: false },
            "java.lang.Long" => Self::Long { boxed: true },
            "double" => Self::Double { boxed: false },
            "java.lang.Double" => Self::Double { boxed: true },
            "boolean" => Self::Boolean { boxed: false },
            "java.lang.Boolean" => Self::Boolean { boxed: true },
            "java.util.List" | "java.util.ArrayList" => Self::List,
            "java.util.Map" | "java.util.HashMap" => Self::Map,
            _ => {
                let ok = !s.is_empty()
                    && s.split('.').all(|p| {
                        let mut c = p.chars();
                        c.next()
                            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == '$')
                            && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                    });
                if !ok || s.contains("$$") {
                    return None;
                }
                Self::Object(s.to_string())
            }
        })
    }

    /// The Java class name (as Dubbo's generic call and Bolt's
    /// `methodArgSigs` name it).
    pub fn class_name(&self) -> &str {
        match self {
            Self::String => "java.lang.String",
            Self::Int { boxed: false } => "int",
            Self::Int { boxed: true } => "java.lang.Integer",
            Self::Long { boxed: false } => "long",
            Self::Long { boxed: true } => "java.lang.Long",
            Self::Double { boxed: false } => "double",
            Self::Double { boxed: true } => "java.lang.Double",
            Self::Boolean { boxed: false } => "boolean",
            Self::Boolean { boxed: true } => "java.lang.Boolean",
            Self::List => "java.util.List",
            Self::Map => "java.util.Map",
            Self::Object(c) => c,
        }
    }

    /// The JVM descriptor (Dubbo's parameter types string).
    pub fn descriptor(&self, out: &mut String) {
        match self {
            Self::Int { boxed: false } => out.push('I'),
            Self::Long { boxed: false } => out.push('J'),
            Self::Double { boxed: false } => out.push('D'),
            Self::Boolean { boxed: false } => out.push('Z'),
            other => {
                out.push('L');
                out.push_str(&other.class_name().replace('.', "/"));
                out.push(';');
            }
        }
    }

    fn primitive(&self) -> bool {
        matches!(
            self,
            Self::Int { boxed: false }
                | Self::Long { boxed: false }
                | Self::Double { boxed: false }
                | Self::Boolean { boxed: false }
        )
    }
}

/// Where a parameter's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamSource {
    /// Index of the template's variable.
    Path(usize),
    Query(String),
    Header(http::HeaderName),
    BodyField(String),
    Body,
}

/// One built parameter.
#[derive(Debug, Clone)]
pub struct Param {
    /// How 400 answers name it (`id`, `body.name`, `header x-a`...).
    pub name: String,
    pub java: JavaType,
    pub source: ParamSource,
    pub optional: bool,
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Var(String),
}

/// The built `http_to_rpc`: what the gateway executes per request.
#[derive(Debug, Clone)]
pub struct HttpToRpc {
    pub protocol: RpcProtocolName,
    pub service: String,
    pub method: String,
    pub version: String,
    pub group: String,
    pub generic: bool,
    pub template: Option<Vec<Segment>>,
    pub params: Vec<Param>,
    /// The typed call's JVM descriptor (`Ljava/lang/String;J`).
    pub descriptor: String,
    pub attachments: Vec<http::HeaderName>,
    pub max_body_bytes: usize,
    /// Whether any parameter reads the body (else it is not read).
    pub reads_body: bool,
}

fn valid_java_name(s: &str) -> bool {
    JavaType::parse(s).is_some_and(|t| matches!(t, JavaType::Object(_)))
}

impl HttpToRpcConfig {
    /// Checks every field; errors name it under `path`.
    pub fn build(&self, path: &str) -> Result<HttpToRpc, BuildError> {
        let f = |field: &str| format!("{path}.{field}");
        if !valid_java_name(&self.service) {
            return Err(BuildError::new(
                f("service"),
                format!("'{}' is not an interface name", self.service),
            ));
        }
        let method_ok = !self.method.is_empty()
            && self.method != "$invoke"
            && self
                .method
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if !method_ok {
            return Err(BuildError::new(
                f("method"),
                format!("'{}' is not a method name", self.method),
            ));
        }
        if self.protocol == RpcProtocolName::Bolt {
            if !self.group.is_empty() {
                return Err(BuildError::new(
                    f("group"),
                    "Bolt services have no group (SOFA RPC names a service by interface:version)",
                ));
            }
            if self.generic {
                return Err(BuildError::new(
                    f("generic"),
                    "generic invocation ($invoke) is Dubbo's; not supported with protocol bolt",
                ));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(BuildError::new(f("max_body_bytes"), "must be at least 1"));
        }
        let template = match &self.path_template {
            None => None,
            Some(t) => Some(parse_template(t).map_err(|m| BuildError::new(f("path_template"), m))?),
        };
        let vars: Vec<&str> = template
            .iter()
            .flatten()
            .filter_map(|s| match s {
                Segment::Var(v) => Some(v.as_str()),
                Segment::Literal(_) => None,
            })
            .collect();
        let mut params = Vec::with_capacity(self.params.len());
        let mut descriptor = String::new();
        for (i, p) in self.params.iter().enumerate() {
            let pp = f(&format!("params[{i}]"));
            let java = JavaType::parse(&p.type_).ok_or_else(|| {
                BuildError::new(
                    format!("{pp}.type"),
                    format!("'{}' is not a Java type name", p.type_),
                )
            })?;
            let set = [
                p.path_param.is_some(),
                p.query_param.is_some(),
                p.header.is_some(),
                p.body_field.is_some(),
                p.body,
            ];
            if set.iter().filter(|s| **s).count() != 1 {
                return Err(BuildError::new(
                    pp,
                    "set exactly one of path_param, query_param, header, body_field, body",
                ));
            }
            let (name, source) = if let Some(v) = &p.path_param {
                let at = vars.iter().position(|x| x == v).ok_or_else(|| {
                    BuildError::new(
                        format!("{pp}.path_param"),
                        format!("'{v}' is not a variable of path_template"),
                    )
                })?;
                (v.clone(), ParamSource::Path(at))
            } else if let Some(q) = &p.query_param {
                (q.clone(), ParamSource::Query(q.clone()))
            } else if let Some(h) = &p.header {
                let n = http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    BuildError::new(
                        format!("{pp}.header"),
                        format!("'{h}' is not a header name"),
                    )
                })?;
                (h.to_ascii_lowercase(), ParamSource::Header(n))
            } else if let Some(b) = &p.body_field {
                (b.clone(), ParamSource::BodyField(b.clone()))
            } else {
                ("body".to_string(), ParamSource::Body)
            };
            if p.optional && java.primitive() {
                return Err(BuildError::new(
                    format!("{pp}.optional"),
                    format!(
                        "a {} cannot be null; use its boxed class",
                        java.class_name()
                    ),
                ));
            }
            java.descriptor(&mut descriptor);
            params.push(Param {
                name,
                java,
                source,
                optional: p.optional,
            });
        }
        let mut attachments = Vec::new();
        for (i, h) in self.attachments_from_headers.iter().enumerate() {
            let n = http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                BuildError::new(
                    f(&format!("attachments_from_headers[{i}]")),
                    format!("'{h}' is not a header name"),
                )
            })?;
            attachments.push(n);
        }
        let reads_body = params
            .iter()
            .any(|p| matches!(p.source, ParamSource::Body | ParamSource::BodyField(_)));
        Ok(HttpToRpc {
            protocol: self.protocol,
            service: self.service.clone(),
            method: self.method.clone(),
            version: self.version.clone(),
            group: self.group.clone(),
            generic: self.generic,
            template,
            params,
            descriptor,
            attachments,
            max_body_bytes: self.max_body_bytes,
            reads_body,
        })
    }
}

/// `/users/{id}/orders/{order}`: literal segments and whole-segment
/// variables.
fn parse_template(t: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = t.strip_prefix('/') else {
        return Err(format!("'{t}' must start with /"));
    };
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for seg in rest.split('/') {
        if let Some(v) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad variable '{{{v}}}'"));
            }
            if seen.contains(&v) {
                return Err(format!("variable '{v}' appears twice"));
            }
            seen.push(v);
            out.push(Segment::Var(v.to_string()));
        } else if seg.contains('{') || seg.contains('}') {
            return Err(format!(
                "segment '{seg}': a variable must be a whole segment"
            ));
        } else {
            out.push(Segment::Literal(seg.to_string()));
        }
    }
    Ok(out)
}

impl HttpToRpc {
    /// The variables' raw (still percent-encoded) values when `path`
    /// matches the template; no template: an empty match.
    pub fn match_path<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let Some(t) = &self.template else {
            return Some(Vec::new());
        };
        let rest = path.strip_prefix('/')?;
        let mut vars = Vec::new();
        let mut segs = rest.split('/');
        for s in t {
            let got = segs.next()?;
            match s {
                Segment::Literal(l) if l == got => {}
                Segment::Literal(_) => return None,
                Segment::Var(_) if got.is_empty() => return None,
                Segment::Var(_) => vars.push(got),
            }
        }
        if segs.next().is_some() {
            return None;
        }
        Some(vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(y: &str) -> HttpToRpcConfig {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn builds_descriptor_and_sources() {
        let b = cfg(r#"
service: com.x.Users
method: find
path_template: /users/{id}/orders/{order}
params:
  - {type: long, path_param: id}
  - {type: java.lang.String, path_param: order}
  - {type: java.lang.Integer, query_param: n, optional: true}
  - {type: com.x.Filter, body_field: filter}
  - {type: java.util.Map, body: true}
  - {type: boolean, header: x-flag}
"#)
        .build("r")
        .unwrap();
        assert_eq!(
            b.descriptor,
            "JLjava/lang/String;Ljava/lang/Integer;Lcom/x/Filter;Ljava/util/Map;Z"
        );
        assert_eq!(b.params[1].source, ParamSource::Path(1));
        assert!(b.reads_body);
        assert_eq!(b.match_path("/users/7/orders/a1"), Some(vec!["7", "a1"]));
        assert_eq!(b.match_path("/users/7/orders"), None);
        assert_eq!(b.match_path("/users//orders/a"), None);
        assert_eq!(b.match_path("/users/7/orders/a/b"), None);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = |y: &str| cfg(y).build("route").unwrap_err().path;
        assert_eq!(e("{service: 'a b', method: m}"), "route.service");
        assert_eq!(e("{service: a.B, method: 'x-y'}"), "route.method");
        assert_eq!(
            e("{service: a.B, method: m, params: [{type: 'in t', body: true}]}"),
            "route.params[0].type"
        );
        assert_eq!(
            e("{service: a.B, method: m, params: [{type: int, body: true, header: x}]}"),
            "route.params[0]"
        );
        assert_eq!(
            e(
                "{service: a.B, method: m, path_template: '/a/{x}', params: [{type: int, path_param: y}]}"
            ),
            "route.params[0].path_param"
        );
        assert_eq!(
            e("{service: a.B, method: m, params: [{type: int, body: true, optional: true}]}"),
            "route.params[0].optional"
        );
        assert_eq!(
            e("{service: a.B, method: m, path_template: 'a/{x}'}"),
            "route.path_template"
        );
        assert_eq!(
            e("{service: a.B, method: m, path_template: '/a{x}'}"),
            "route.path_template"
        );
        assert_eq!(
            e("{protocol: bolt, service: a.B, method: m, group: g}"),
            "route.group"
        );
        assert_eq!(
            e("{protocol: bolt, service: a.B, method: m, generic: true}"),
            "route.generic"
        );
        assert!(
            serde_yaml::from_str::<HttpToRpcConfig>("{service: a.B, method: m, nope: 1}").is_err()
        );
    }
}
