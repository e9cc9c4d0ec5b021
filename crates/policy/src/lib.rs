//! Access decisions, pure and deny-by-default: data in, a [`Decision`] out,
//! no I/O. Every decision names the rule that made it, so that
//! `policy explain`, the audit log and error messages can say why.

pub mod budget;

use portcullis_identity::{AuthMethod, Principal, PrincipalKind};
use serde::Serialize;

/// One grant: these principals and groups may open sessions on these
/// connections. `"*"` in `connections` means every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The rule's name as shown in decisions (`grants[0]` if unnamed).
    pub name: String,
    pub principals: Vec<String>,
    pub groups: Vec<String>,
    pub connections: Vec<String>,
    /// What its principals may take (empty: no budget).
    pub budgets: Vec<budget::Limit>,
}

impl Grant {
    fn covers_connection(&self, connection: &str) -> bool {
        self.connections.iter().any(|c| c == "*" || c == connection)
    }

    fn covers_principal(&self, p: &Principal) -> Option<Match> {
        if self.principals.contains(&p.subject) {
            return Some(Match::Principal(p.subject.clone()));
        }
        self.groups
            .iter()
            .find(|g| p.groups.contains(g))
            .map(|g| Match::Group(g.clone()))
    }
}

/// How a grant matched the principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "value")]
pub enum Match {
    Principal(String),
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Decision {
    Allow { rule: String, matched: Match },
    Deny { reason: DenyReason },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DenyReason {
    #[error("no grant gives {principal} access to connection {connection:?}")]
    NoGrant {
        principal: String,
        connection: String,
    },
    #[error(
        "{principal} acts for {person}, who has no grant to connection {connection:?}: a delegated token reaches no more than its person"
    )]
    Delegation {
        principal: String,
        person: String,
        connection: String,
    },
}

/// The person a delegated token acts for, as a principal with the groups
/// the token carries (the person's, when it was minted).
fn delegated_person(p: &Principal) -> Option<Principal> {
    match &p.via {
        AuthMethod::GatewayToken {
            on_behalf_of: Some(person),
            ..
        } => Some(Principal {
            subject: person.clone(),
            kind: PrincipalKind::Human,
            groups: p.groups.clone(),
            via: AuthMethod::Oidc {
                issuer: String::new(),
                expires_at: None,
            },
        }),
        _ => None,
    }
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// The set of grants in force.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    grants: Vec<Grant>,
}

impl Policy {
    pub fn new(grants: Vec<Grant>) -> Self {
        Self { grants }
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// May `principal` open a session on `connection`? The first grant
    /// that covers both wins; no grant means deny.
    ///
    /// A delegated principal (an agent acting for a person) is allowed
    /// only where its person would be too: the intersection.
    ///
    /// The grant that admits it (and so its budget) is its person's,
    /// unless a grant names the delegated principal itself: a review found
    /// an agent matching a group grant without a budget while its person's
    /// own grant, listed first, had one.
    pub fn decide(&self, principal: &Principal, connection: &str) -> Decision {
        let d = self.decide_one(principal, connection);
        let Some(person) = delegated_person(principal) else {
            return d;
        };
        if !d.is_allow() {
            return d;
        }
        let persons = self.decide_one(&person, connection);
        if !persons.is_allow() {
            return Decision::Deny {
                reason: DenyReason::Delegation {
                    principal: principal.subject.clone(),
                    person: person.subject,
                    connection: connection.to_string(),
                },
            };
        }
        let named = self
            .grants
            .iter()
            .find(|g| g.covers_connection(connection) && g.principals.contains(&principal.subject));
        match named {
            Some(g) => Decision::Allow {
                rule: g.name.clone(),
                matched: Match::Principal(principal.subject.clone()),
            },
            None => persons,
        }
    }

    fn decide_one(&self, principal: &Principal, connection: &str) -> Decision {
        self.grants
            .iter()
            .filter(|g| g.covers_connection(connection))
            .find_map(|g| {
                g.covers_principal(principal)
                    .map(|matched| Decision::Allow {
                        rule: g.name.clone(),
                        matched,
                    })
            })
            .unwrap_or_else(|| Decision::Deny {
                reason: DenyReason::NoGrant {
                    principal: principal.subject.clone(),
                    connection: connection.to_string(),
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subject: &str, groups: &[&str]) -> Principal {
        Principal {
            subject: subject.into(),
            kind: PrincipalKind::of_subject(subject),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            via: AuthMethod::GatewayToken {
                token_id: "t".into(),
                on_behalf_of: None,
                audience: None,
            },
        }
    }

    fn grant(name: &str, principals: &[&str], groups: &[&str], conns: &[&str]) -> Grant {
        let own = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Grant {
            name: name.into(),
            principals: own(principals),
            groups: own(groups),
            connections: own(conns),
            budgets: Vec::new(),
        }
    }

    fn delegated(agent: &str, person: &str, groups: &[&str]) -> Principal {
        Principal {
            via: AuthMethod::GatewayToken {
                token_id: "d".into(),
                on_behalf_of: Some(person.into()),
                audience: None,
            },
            ..principal(agent, groups)
        }
    }

    #[test]
    fn a_delegated_token_never_borrows_a_bare_agents_grant() {
        let p = Policy::new(vec![
            grant("deployer", &["agent:deployer"], &[], &["releases"]),
            grant(
                "alice-claude",
                &["agent:claude@alice"],
                &[],
                &["db", "secrets"],
            ),
            grant("dbas", &[], &["dba"], &["db"]),
            grant("alice", &["user:alice"], &[], &["db"]),
        ]);
        // Alice mints `agent:deployer`: namespaced under her, it is not
        // the real agent:deployer.
        let impostor = delegated("agent:deployer@alice", "user:alice", &["dba"]);
        assert!(!p.decide(&impostor, "releases").is_allow());
        assert!(
            p.decide(&principal("agent:deployer", &[]), "releases")
                .is_allow()
        );
        // Its person's groups reach what they reach.
        assert!(p.decide(&impostor, "db").is_allow());
        // A grant for the namespaced agent, within the person's reach.
        let claude = delegated("agent:claude@alice", "user:alice", &[]);
        assert!(p.decide(&claude, "db").is_allow());
        // …but never beyond it: the intersection.
        let d = p.decide(&claude, "secrets");
        let Decision::Deny { reason } = d else {
            panic!("allowed beyond the person's reach: {d:?}")
        };
        assert!(matches!(reason, DenyReason::Delegation { .. }), "{reason}");
        assert!(reason.to_string().contains("acts for user:alice"));
    }

    /// A review found an agent admitted by a group grant with no budget
    /// while its person's own grant, listed first, had one: a delegated
    /// principal is admitted by its person's grant unless a grant names it.
    #[test]
    fn a_delegated_token_is_admitted_by_its_persons_grant() {
        let p = Policy::new(vec![
            grant("alice", &["user:alice"], &[], &["db"]),
            grant("eng", &[], &["eng"], &["db", "wiki"]),
            grant("alice-bot", &["agent:bot@alice"], &[], &["db"]),
        ]);
        let rule = |d: Decision| match d {
            Decision::Allow { rule, .. } => rule,
            Decision::Deny { reason } => panic!("{reason}"),
        };
        let x = delegated("agent:x@alice", "user:alice", &["eng"]);
        assert_eq!(rule(p.decide(&x, "db")), "alice");
        assert_eq!(rule(p.decide(&x, "wiki")), "eng");
        // A grant naming the delegated agent is its own.
        let bot = delegated("agent:bot@alice", "user:alice", &["eng"]);
        assert_eq!(rule(p.decide(&bot, "db")), "alice-bot");
        // Not delegated: as before.
        assert_eq!(rule(p.decide(&principal("agent:y", &["eng"]), "db")), "eng");
    }

    #[test]
    fn empty_policy_denies() {
        let d = Policy::default().decide(&principal("agent:a", &[]), "db");
        assert!(!d.is_allow());
        let Decision::Deny { reason } = d else {
            unreachable!()
        };
        let msg = reason.to_string();
        assert!(msg.contains("agent:a") && msg.contains("\"db\""), "{msg}");
    }

    #[test]
    fn principal_grant_allows_only_its_connection() {
        let p = Policy::new(vec![grant("g", &["agent:a"], &[], &["db"])]);
        assert_eq!(
            p.decide(&principal("agent:a", &[]), "db"),
            Decision::Allow {
                rule: "g".into(),
                matched: Match::Principal("agent:a".into())
            }
        );
        assert!(!p.decide(&principal("agent:a", &[]), "api").is_allow());
        assert!(!p.decide(&principal("agent:b", &[]), "db").is_allow());
    }

    #[test]
    fn group_grant_and_wildcard() {
        let p = Policy::new(vec![
            grant("devs-db", &[], &["devs"], &["db"]),
            grant("ops-all", &[], &["ops"], &["*"]),
        ]);
        assert!(p.decide(&principal("user:x", &["devs"]), "db").is_allow());
        assert!(!p.decide(&principal("user:x", &["devs"]), "prod").is_allow());
        let d = p.decide(&principal("user:y", &["ops"]), "prod");
        assert_eq!(
            d,
            Decision::Allow {
                rule: "ops-all".into(),
                matched: Match::Group("ops".into())
            }
        );
    }

    #[test]
    fn first_matching_grant_is_named() {
        let p = Policy::new(vec![
            grant("first", &["agent:a"], &[], &["db"]),
            grant("second", &["agent:a"], &[], &["*"]),
        ]);
        let Decision::Allow { rule, .. } = p.decide(&principal("agent:a", &[]), "db") else {
            panic!()
        };
        assert_eq!(rule, "first");
    }
}
