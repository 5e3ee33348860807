//! Requirements (Envoy's `JwtRequirement`) compiled into a tree over
//! provider indices, and their evaluation over the per-provider results
//! of one request (each provider's token verified at most once).

use super::provider::{Failure, Provider, Verified};
use meshgate_core::BuildError;
use meshgate_core::config::jwt_authn::JwtRequirementConfig;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
pub(super) enum Node {
    /// The provider's token must verify, with these audiences instead of
    /// the provider's when set.
    Provider(usize, Option<Vec<String>>),
    Any(Vec<Node>),
    All(Vec<Node>),
    AllowMissing,
    AllowMissingOrFailed,
}

/// A compiled requirement and the providers whose tokens it looks at.
#[derive(Debug)]
pub(super) struct Requirement {
    pub node: Node,
    pub providers: Vec<usize>,
    /// `provider_and_audiences`: the audiences this requirement accepts
    /// for a provider instead of its own.
    audiences: Vec<(usize, Vec<String>)>,
}

/// What one provider's token gave on this request.
pub(super) enum Outcome {
    Missing,
    Failed(Failure),
    Verified(Arc<Verified>),
}

impl Requirement {
    pub fn build(
        path: &str,
        c: &JwtRequirementConfig,
        providers: &BTreeMap<String, usize>,
    ) -> Result<Self, BuildError> {
        let mut node = build_node(path, c, providers, 0)?;
        // Alone, `allow_missing[_or_failed]` applies to every provider's
        // token (Envoy's semantics): any of them, or the allowance.
        if matches!(node, Node::AllowMissing | Node::AllowMissingOrFailed) {
            let mut any: Vec<Node> = providers
                .values()
                .map(|i| Node::Provider(*i, None))
                .collect();
            any.push(node);
            node = Node::Any(any);
        }
        let mut used = Vec::new();
        collect(&node, &mut used);
        used.sort_unstable();
        used.dedup();
        let mut audiences = Vec::new();
        overrides(&node, &mut audiences);
        Ok(Self {
            node,
            providers: used,
            audiences,
        })
    }

    /// `Ok` or the failure that decides the answer.
    pub fn evaluate(&self, results: &[(usize, Outcome)], all: &[Provider]) -> Result<(), Failure> {
        eval(&self.node, results, all)
    }
}

impl Requirement {
    /// The audiences this requirement names for provider `i`, if it does.
    pub fn audiences(&self, i: usize) -> Option<&[String]> {
        self.audiences
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, a)| a.as_slice())
    }
}

fn overrides(n: &Node, out: &mut Vec<(usize, Vec<String>)>) {
    match n {
        Node::Provider(i, Some(a)) => out.push((*i, a.clone())),
        Node::Any(l) | Node::All(l) => l.iter().for_each(|n| overrides(n, out)),
        _ => {}
    }
}

fn collect(n: &Node, out: &mut Vec<usize>) {
    match n {
        Node::Provider(i, _) => out.push(*i),
        Node::Any(l) | Node::All(l) => l.iter().for_each(|n| collect(n, out)),
        Node::AllowMissing | Node::AllowMissingOrFailed => {}
    }
}

const MAX_DEPTH: usize = 16;

fn build_node(
    path: &str,
    c: &JwtRequirementConfig,
    providers: &BTreeMap<String, usize>,
    depth: usize,
) -> Result<Node, BuildError> {
    if depth > MAX_DEPTH {
        return Err(BuildError::new(path, "requirements nested too deep"));
    }
    let set = [
        c.provider_name.is_some(),
        c.provider_and_audiences.is_some(),
        c.requires_any.is_some(),
        c.requires_all.is_some(),
        c.allow_missing.is_some(),
        c.allow_missing_or_failed.is_some(),
    ];
    if set.iter().filter(|b| **b).count() != 1 {
        return Err(BuildError::new(
            path,
            "set exactly one of provider_name, provider_and_audiences, requires_any, requires_all, allow_missing, allow_missing_or_failed",
        ));
    }
    let provider = |field: &str, name: &str| {
        providers.get(name).copied().ok_or_else(|| {
            BuildError::new(
                format!("{path}.{field}"),
                format!("no provider '{name}' in providers"),
            )
        })
    };
    let list = |field: &str, l: &[JwtRequirementConfig]| -> Result<Vec<Node>, BuildError> {
        if l.len() < 2 {
            return Err(BuildError::new(
                format!("{path}.{field}.requirements"),
                "at least two requirements",
            ));
        }
        l.iter()
            .enumerate()
            .map(|(i, r)| {
                build_node(
                    &format!("{path}.{field}.requirements[{i}]"),
                    r,
                    providers,
                    depth + 1,
                )
            })
            .collect()
    };
    Ok(if let Some(p) = &c.provider_name {
        Node::Provider(provider("provider_name", p)?, None)
    } else if let Some(pa) = &c.provider_and_audiences {
        Node::Provider(
            provider("provider_and_audiences.provider_name", &pa.provider_name)?,
            Some(pa.audiences.clone()),
        )
    } else if let Some(l) = &c.requires_any {
        Node::Any(list("requires_any", &l.requirements)?)
    } else if let Some(l) = &c.requires_all {
        Node::All(list("requires_all", &l.requirements)?)
    } else if c.allow_missing.is_some() {
        Node::AllowMissing
    } else {
        Node::AllowMissingOrFailed
    })
}

fn provider_outcome(
    i: usize,
    aud: &Option<Vec<String>>,
    results: &[(usize, Outcome)],
    all: &[Provider],
) -> Result<(), Failure> {
    match results.iter().find(|(j, _)| *j == i).map(|(_, o)| o) {
        None | Some(Outcome::Missing) => Err(Failure::Missing),
        Some(Outcome::Failed(f)) => Err(*f),
        Some(Outcome::Verified(v)) => {
            let audiences = match aud {
                Some(a) => a.as_slice(),
                None => all.get(i).map_or(&[][..], |p| p.audiences.as_slice()),
            };
            if Provider::audience_ok(audiences, v) {
                Ok(())
            } else {
                Err(Failure::Audience)
            }
        }
    }
}

fn eval(n: &Node, results: &[(usize, Outcome)], all: &[Provider]) -> Result<(), Failure> {
    match n {
        Node::Provider(i, aud) => provider_outcome(*i, aud, results, all),
        Node::All(l) => {
            for c in l {
                eval(c, results, all)?;
            }
            Ok(())
        }
        Node::Any(l) => {
            let mut failure = None;
            let mut allow_missing = false;
            for c in l {
                match c {
                    Node::AllowMissingOrFailed => return Ok(()),
                    Node::AllowMissing => allow_missing = true,
                    c => match eval(c, results, all) {
                        Ok(()) => return Ok(()),
                        // A present but bad token outweighs a missing one.
                        Err(Failure::Missing) => {}
                        Err(f) => failure = failure.or(Some(f)),
                    },
                }
            }
            match failure {
                Some(f) => Err(f),
                None if allow_missing => Ok(()),
                None => Err(Failure::Missing),
            }
        }
        Node::AllowMissingOrFailed => Ok(()),
        // Nested alone (not inside `requires_any`): passes only if no
        // token was given to any provider the request looked at.
        Node::AllowMissing => {
            for (_, o) in results {
                if let Outcome::Failed(f) = o {
                    return Err(*f);
                }
            }
            Ok(())
        }
    }
}
