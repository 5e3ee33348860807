//! The typed configs of the `rbac` filters (Envoy's
//! `envoy.config.rbac.v3.RBAC` and the HTTP and network filters around it):
//! the contract between the YAML loader, the xDS translation
//! (`meshgate_xds::rbac`) and the policy engine (`meshgate_filters::rbac`).
//! Field names and JSON shapes are Envoy's, so a policy written for Envoy
//! reads the same here; a field meshgate does not implement (CEL
//! `condition`, `matcher`, `custom`, ...) is an unknown field, refused by
//! name, never ignored.

use super::filters::{RegexMatcherConfig, StringMatcherConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Envoy's `RBAC`: an action and named policies.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RbacRules {
    #[serde(default)]
    pub action: RbacAction,
    /// Policies by name; evaluated in name order (the first that matches is
    /// the effective policy).
    #[serde(default)]
    pub policies: BTreeMap<String, RbacPolicy>,
}

/// `RBAC.action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RbacAction {
    /// Allowed iff some policy matches.
    #[default]
    Allow,
    /// Denied iff some policy matches.
    Deny,
    /// Always allowed; a matching policy is only recorded.
    Log,
}

/// Envoy's `Policy`: matches when any permission and any principal match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RbacPolicy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// Envoy's `Permission` (what is accessed), one kind per entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Permission {
    /// `any: true` matches everything (`false` is refused).
    Any(bool),
    AndRules(PermissionSet),
    OrRules(PermissionSet),
    NotRule(Box<Permission>),
    Header(RbacHeaderMatcher),
    UrlPath(PathMatcherConfig),
    DestinationIp(CidrRange),
    DestinationPort(u32),
    DestinationPortRange(PortRange),
    RequestedServerName(StringMatcherConfig),
    Metadata(MetadataMatcherConfig),
}

/// `Permission.Set`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSet {
    pub rules: Vec<Permission>,
}

/// Envoy's `Principal` (who accesses), one kind per entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Principal {
    /// `any: true` matches everyone (`false` is refused).
    Any(bool),
    AndIds(PrincipalSet),
    OrIds(PrincipalSet),
    NotId(Box<Principal>),
    /// A verified mTLS peer; `principal_name` is matched against its URI
    /// SANs, then DNS SANs, then subject.
    Authenticated(Authenticated),
    /// Deprecated in Envoy: the same as `direct_remote_ip`.
    SourceIp(CidrRange),
    /// The connection's peer address.
    DirectRemoteIp(CidrRange),
    /// The trusted client address (`x-forwarded-for` as
    /// `xff_num_trusted_hops` defines it).
    RemoteIp(CidrRange),
    Header(RbacHeaderMatcher),
    UrlPath(PathMatcherConfig),
    Metadata(MetadataMatcherConfig),
}

/// `Principal.Set`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSet {
    pub ids: Vec<Principal>,
}

/// `Principal.Authenticated`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Authenticated {
    /// None: any verified peer certificate matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_name: Option<StringMatcherConfig>,
}

/// Envoy's `CidrRange`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRange {
    pub address_prefix: String,
    /// Bits of the prefix (default 0: every address of the family).
    #[serde(default)]
    pub prefix_len: u32,
}

/// Envoy's `Int32Range`: `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub start: i32,
    pub end: i32,
}

/// Envoy's `PathMatcher`: the path without query or fragment.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatcherConfig {
    pub path: StringMatcherConfig,
}

/// Envoy's `route.v3.HeaderMatcher` as RBAC uses it: exactly one of
/// the match kinds (none: `present_match: true`), `invert_match` negates.
/// Pseudo headers `:method`, `:path`, `:authority`, `:scheme` are matched
/// as Envoy does. Several values of a header are joined with `,`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RbacHeaderMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex_match: Option<RegexMatcherConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatcherConfig>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_match: bool,
}

/// Envoy's `MetadataMatcher`: a value in the stream's dynamic metadata
/// (`filter` namespace, then `path` keys), e.g. a JWT claim under
/// `envoy.filters.http.jwt_authn`. A missing value does not match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataMatcherConfig {
    pub filter: String,
    pub path: Vec<PathSegment>,
    pub value: ValueMatcherConfig,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// `MetadataMatcher.PathSegment`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathSegment {
    pub key: String,
}

/// Envoy's `ValueMatcher`: exactly one kind.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatcherConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatcherConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bool_match: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    /// Matches a list with at least one element `one_of` matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_match: Option<Box<ListMatcherConfig>>,
}

/// `ListMatcher`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListMatcherConfig {
    pub one_of: ValueMatcherConfig,
}

/// The `rbac` stream filter's config (Envoy's
/// `envoy.extensions.filters.http.rbac.v3.RBAC`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RbacHttpConfig {
    /// Enforced; absent: nothing is enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RbacRules>,
    /// The `stat_prefix` label of the enforced rules' counters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rules_stat_prefix: String,
    /// Evaluated, counted and published in dynamic metadata, never
    /// enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_rules: Option<RbacRules>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shadow_rules_stat_prefix: String,
}

/// The `rbac` stream filter's per-route config (Envoy's `RBACPerRoute`):
/// `rbac` replaces the filter's config on this route; absent, the filter
/// is off here.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RbacPerRouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac: Option<RbacHttpConfig>,
}

/// The `rbac` network filter's config (Envoy's
/// `envoy.extensions.filters.network.rbac.v3.RBAC`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RbacNetworkConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RbacRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_rules: Option<RbacRules>,
    /// The `stat_prefix` label of the counters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stat_prefix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shadow_rules_stat_prefix: String,
    /// Only `ONE_TIME_ON_FIRST_BYTE` (evaluated once per connection).
    #[serde(default)]
    pub enforcement_type: EnforcementType,
}

/// `RBAC.EnforcementType` of the network filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnforcementType {
    #[default]
    OneTimeOnFirstByte,
    /// Refused by the filter: meshgate evaluates once per connection.
    Continuous,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_typed;

    #[test]
    fn envoy_shaped_rules_parse_and_serialize_back() {
        let v = serde_json::json!({
            "rules": {"action": "DENY", "policies": {"p": {
                "permissions": [
                    {"and_rules": {"rules": [
                        {"header": {"name": ":method", "exact_match": "POST"}},
                        {"url_path": {"path": {"prefix": "/admin"}}},
                    ]}},
                    {"not_rule": {"destination_port": 80}},
                    {"destination_port_range": {"start": 8000, "end": 9000}},
                ],
                "principals": [
                    {"authenticated": {"principal_name": {"exact": "spiffe://a"}}},
                    {"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
                    {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                        "path": [{"key": "payload"}, {"key": "sub"}],
                        "value": {"string_match": {"exact": "alice"}}}},
                    {"any": true},
                ],
            }}},
            "rules_stat_prefix": "edge",
        });
        let c: RbacHttpConfig = parse_typed(&v).unwrap();
        let again: RbacHttpConfig = parse_typed(&serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(c, again);
        assert_eq!(c.rules.as_ref().unwrap().action, RbacAction::Deny);
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let e = parse_typed::<RbacRules>(&serde_json::json!({"policies": {"p": {
            "permissions": [{"any": true}], "principals": [{"any": true}],
            "condition": {}}}}))
        .unwrap_err();
        assert!(e.message.contains("condition"), "{e:?}");
        let e = parse_typed::<RbacRules>(&serde_json::json!({"policies": {"p": {
            "permissions": [{"uri_template": {}}], "principals": [{"any": true}]}}}))
        .unwrap_err();
        assert!(e.message.contains("uri_template"), "{e:?}");
        let e = parse_typed::<RbacHttpConfig>(&serde_json::json!({"matcher": {}})).unwrap_err();
        assert!(e.message.contains("matcher"), "{e:?}");
    }
}
