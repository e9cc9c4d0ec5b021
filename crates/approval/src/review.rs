//! A review and its rules, free of I/O: who may approve, how many, when
//! it expires, and that an approval is for one exact action, once.

use serde::{Deserialize, Serialize};

/// Where a review stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    /// Approved and consumed by the action it was for.
    Used,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Used => "used",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => State::Pending,
            "approved" => State::Approved,
            "denied" => State::Denied,
            "expired" => State::Expired,
            "used" => State::Used,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    pub at: i64,
}

/// One held action waiting for (or having had) a person's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub requester: String,
    /// The person an agent acts for, when known.
    pub on_behalf_of: Option<String>,
    pub connection: String,
    /// `statement`, `http`, `tool` or `session`.
    pub kind: String,
    /// The exact action (statement text, method + path + body digest,
    /// tool + arguments, or the session request).
    pub action: String,
    pub action_sha256: String,
    /// Statement class, HTTP method, tool name…
    pub classification: String,
    pub state: State,
    pub required: u32,
    pub approvers: Vec<String>,
    pub approvals: Vec<Approval>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub used_at: Option<i64>,
    /// What a held SQL write would change (see [`crate::Preview`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<crate::Preview>,
}

/// Why a decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("review {id} is {state}, not pending")]
    NotPending { id: String, state: &'static str },
    #[error("review {0} has expired")]
    Expired(String),
    #[error("no one approves their own request")]
    SelfApproval,
    #[error("only people (user:…) approve; {0} is not one")]
    NotAPerson(String),
    #[error("{who} is in none of the approver groups ({groups})")]
    NotAnApprover { who: String, groups: String },
    #[error("{0} has already approved this review")]
    AlreadyApproved(String),
    #[error("no review {0}")]
    Unknown(String),
    #[error("the review store is unavailable")]
    Unavailable,
}

/// SHA-256 (hex) binding an approval to one action of one principal on
/// one connection.
pub fn action_hash(requester: &str, connection: &str, kind: &str, action: &str) -> String {
    let mut s = String::new();
    for part in [requester, connection, kind, action] {
        // Length-prefixed: no two different tuples hash alike.
        s.push_str(&format!("{}:{part}\n", part.len()));
    }
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        s.as_bytes(),
    ))
}

/// Who is deciding.
pub struct Decider<'a> {
    pub subject: &'a str,
    pub human: bool,
    pub groups: &'a [String],
}

impl Review {
    /// Mark as expired when its time is up; true when it changed.
    pub fn expire_if_due(&mut self, now: i64) -> bool {
        if matches!(self.state, State::Pending | State::Approved) && now >= self.expires_at {
            self.state = State::Expired;
            return true;
        }
        false
    }

    fn check_decider(&self, d: &Decider<'_>, now: i64) -> Result<(), ReviewError> {
        if now >= self.expires_at {
            return Err(ReviewError::Expired(self.id.clone()));
        }
        if self.state != State::Pending {
            return Err(ReviewError::NotPending {
                id: self.id.clone(),
                state: self.state.as_str(),
            });
        }
        if d.subject == self.requester || Some(d.subject) == self.on_behalf_of.as_deref() {
            return Err(ReviewError::SelfApproval);
        }
        if !d.human {
            return Err(ReviewError::NotAPerson(d.subject.to_string()));
        }
        if !self.approvers.iter().any(|g| d.groups.contains(g)) {
            return Err(ReviewError::NotAnApprover {
                who: d.subject.to_string(),
                groups: self.approvers.join(", "),
            });
        }
        Ok(())
    }

    /// Add an approval; the review is approved once `required` distinct
    /// approvers said yes.
    pub fn approve(&mut self, d: &Decider<'_>, now: i64) -> Result<State, ReviewError> {
        self.check_decider(d, now)?;
        if self.approvals.iter().any(|a| a.by == d.subject) {
            return Err(ReviewError::AlreadyApproved(d.subject.to_string()));
        }
        self.approvals.push(Approval {
            by: d.subject.to_string(),
            at: now,
        });
        if self.approvals.len() as u32 >= self.required {
            self.state = State::Approved;
            self.decided_by = Some(
                self.approvals
                    .iter()
                    .map(|a| a.by.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        Ok(self.state)
    }

    pub fn deny(
        &mut self,
        d: &Decider<'_>,
        reason: Option<String>,
        now: i64,
    ) -> Result<(), ReviewError> {
        self.check_decider(d, now)?;
        self.state = State::Denied;
        self.decided_by = Some(d.subject.to_string());
        self.reason = reason;
        Ok(())
    }

    /// Consume an approval for the action it was given for.
    pub fn consume(&mut self, now: i64) -> bool {
        if self.state == State::Approved && now < self.expires_at {
            self.state = State::Used;
            self.used_at = Some(now);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(required: u32) -> Review {
        Review {
            id: "r1".into(),
            created_at: 100,
            expires_at: 1000,
            requester: "agent:claude".into(),
            on_behalf_of: Some("user:alice".into()),
            connection: "db".into(),
            kind: "statement".into(),
            action: "DELETE FROM t WHERE id = 1".into(),
            action_sha256: action_hash(
                "agent:claude",
                "db",
                "statement",
                "DELETE FROM t WHERE id = 1",
            ),
            classification: "write".into(),
            state: State::Pending,
            required,
            approvers: vec!["dba".into()],
            approvals: vec![],
            decided_by: None,
            reason: None,
            used_at: None,
            preview: None,
        }
    }

    fn dba(subject: &str) -> (String, Vec<String>) {
        (subject.to_string(), vec!["dba".to_string()])
    }

    #[test]
    fn hash_binds_every_part() {
        let h = action_hash("a", "db", "statement", "DELETE FROM t WHERE id = 1");
        assert_ne!(h, action_hash("a", "db", "statement", "DELETE FROM t"));
        assert_ne!(
            h,
            action_hash("b", "db", "statement", "DELETE FROM t WHERE id = 1")
        );
        assert_ne!(
            h,
            action_hash("a", "db2", "statement", "DELETE FROM t WHERE id = 1")
        );
        // Length prefixes: moving a boundary changes the hash.
        assert_ne!(
            action_hash("ab", "c", "k", "x"),
            action_hash("a", "bc", "k", "x")
        );
    }

    #[test]
    fn one_approver_approves_then_the_action_uses_it_once() {
        let mut r = review(1);
        let (s, g) = dba("user:bob");
        let d = Decider {
            subject: &s,
            human: true,
            groups: &g,
        };
        assert_eq!(r.approve(&d, 200), Ok(State::Approved));
        assert!(r.consume(201));
        assert!(!r.consume(202), "single use");
        assert_eq!(r.state, State::Used);
    }

    #[test]
    fn no_self_approval_not_even_for_the_person_behind_the_agent() {
        let mut r = review(1);
        for who in ["agent:claude", "user:alice"] {
            let (s, g) = dba(who);
            let d = Decider {
                subject: &s,
                human: true,
                groups: &g,
            };
            assert_eq!(r.approve(&d, 200), Err(ReviewError::SelfApproval));
        }
    }

    #[test]
    fn approvers_must_be_people_in_the_groups() {
        let mut r = review(1);
        let g = vec!["dev".to_string()];
        let d = Decider {
            subject: "user:carol",
            human: true,
            groups: &g,
        };
        assert!(matches!(
            r.approve(&d, 200),
            Err(ReviewError::NotAnApprover { .. })
        ));
        let (s, g) = dba("agent:bot");
        let d = Decider {
            subject: &s,
            human: false,
            groups: &g,
        };
        assert!(matches!(
            r.approve(&d, 200),
            Err(ReviewError::NotAPerson(_))
        ));
    }

    #[test]
    fn two_distinct_approvers_are_two() {
        let mut r = review(2);
        let (s, g) = dba("user:bob");
        let bob = Decider {
            subject: &s,
            human: true,
            groups: &g,
        };
        assert_eq!(r.approve(&bob, 200), Ok(State::Pending));
        assert_eq!(
            r.approve(&bob, 201),
            Err(ReviewError::AlreadyApproved("user:bob".into()))
        );
        let (s2, g2) = dba("user:dave");
        let dave = Decider {
            subject: &s2,
            human: true,
            groups: &g2,
        };
        assert_eq!(r.approve(&dave, 202), Ok(State::Approved));
        assert_eq!(r.decided_by.as_deref(), Some("user:bob, user:dave"));
    }

    #[test]
    fn denial_and_expiry_end_a_review() {
        let mut r = review(1);
        let (s, g) = dba("user:bob");
        let d = Decider {
            subject: &s,
            human: true,
            groups: &g,
        };
        r.deny(&d, Some("not today".into()), 200).unwrap();
        assert_eq!(r.state, State::Denied);
        assert!(matches!(
            r.approve(&d, 201),
            Err(ReviewError::NotPending { .. })
        ));

        let mut r = review(1);
        assert!(r.expire_if_due(1000));
        assert_eq!(r.state, State::Expired);
        let mut r = review(1);
        assert_eq!(r.approve(&d, 1000), Err(ReviewError::Expired("r1".into())));
        let mut r = review(1);
        r.approve(&d, 500).unwrap();
        assert!(!r.consume(1000), "an approval expires too");
    }
}
