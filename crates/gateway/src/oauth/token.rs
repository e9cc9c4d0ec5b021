//! `POST /oauth/token`: a code or a refresh token in, a short-lived
//! access token bound to one resource and a new refresh token out. Every
//! secret is spent before it is checked, so a wrong verifier burns the
//! code; a spent secret that comes back (a stolen refresh token racing
//! its owner, a replayed code) revokes the whole grant, access tokens
//! included (OAuth 2.1 §4.3.1, RFC 6749 §4.1.2).

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_audit::OAuthAction;
use portcullis_http::{Body, json_response};
use portcullis_mcp::McpEndpoint;
use portcullis_store::{GrantKind, NewTokenRow, OAuthGrantRow, Spent};
use serde::{Deserialize, Serialize};

use super::authorize::Code;
use super::{
    OAuthEntry, OAuthServer, Person, SCOPE, form, hash, json_error, one, s256, secret, unix_now,
};

/// What a refresh token stands for.
#[derive(Serialize, Deserialize)]
struct Refresh {
    resource: String,
    audience: String,
    person: Person,
}

/// A refusal at the token endpoint (RFC 6749 §5.2).
struct Refused {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn refused(error: &'static str, description: impl Into<String>) -> Refused {
    let status = if error == "invalid_client" {
        StatusCode::UNAUTHORIZED
    } else if error == "temporarily_unavailable" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    Refused {
        status,
        error,
        description: description.into(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Refused {
    tracing::error!(error = %e, "OAuth token endpoint: store or audit unavailable");
    refused(
        "temporarily_unavailable",
        "the store or the audit log is unavailable",
    )
}

type Params = [(String, String)];

fn param<'a>(params: &'a Params, name: &str) -> Result<Option<&'a str>, Refused> {
    one(params, name).map_err(|e| refused("invalid_request", e))
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, Refused> {
    param(params, name)?.ok_or_else(|| refused("invalid_request", format!("{name} is missing")))
}

impl OAuthServer {
    pub(super) async fn token(&self, req: Request<Incoming>, mcp: &McpEndpoint) -> Response<Body> {
        if req.method() != Method::POST {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "POST a form",
            );
        }
        let Some(params) = form(req).await else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "expected an application/x-www-form-urlencoded body of at most 16 KiB",
            );
        };
        match self.grant(&params, mcp).await {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(r) => {
                tracing::info!(error = r.error, description = %r.description, "OAuth token request refused");
                json_error(r.status, r.error, &r.description)
            }
        }
    }

    async fn grant(
        &self,
        params: &Params,
        mcp: &McpEndpoint,
    ) -> Result<serde_json::Value, Refused> {
        let grant_type = required(params, "grant_type")?;
        if grant_type != "authorization_code" && grant_type != "refresh_token" {
            return Err(refused(
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
            ));
        }
        let client_id = required(params, "client_id")?;
        match self.store.oauth_client(client_id).await {
            Ok(Some(c)) if c.revoked_at.is_none() => {}
            Ok(_) => return Err(refused("invalid_client", "unknown or revoked client")),
            Err(e) => return Err(unavailable(e)),
        }
        let resource = param(params, "resource")?;
        if grant_type == "authorization_code" {
            self.code_grant(params, client_id, resource, mcp).await
        } else {
            self.refresh_grant(params, client_id, resource, mcp).await
        }
    }

    async fn code_grant(
        &self,
        params: &Params,
        client_id: &str,
        resource: Option<&str>,
        mcp: &McpEndpoint,
    ) -> Result<serde_json::Value, Refused> {
        let code = required(params, "code")?;
        let verifier = required(params, "code_verifier")?;
        let redirect_uri = param(params, "redirect_uri")?;
        let (family, data) = self.spend(code, GrantKind::Code, client_id).await?;
        let code: Code = serde_json::from_str(&data).map_err(unavailable)?;
        let checked = self.check_code(&code, verifier, redirect_uri, resource, mcp);
        self.audit_refused(client_id, &family, checked).await?;
        let grant = Refresh {
            resource: code.ask.resource,
            audience: code.ask.audience,
            person: code.person,
        };
        self.issue(client_id, &family, grant, OAuthAction::TokenIssued)
            .await
    }

    async fn refresh_grant(
        &self,
        params: &Params,
        client_id: &str,
        resource: Option<&str>,
        mcp: &McpEndpoint,
    ) -> Result<serde_json::Value, Refused> {
        let token = required(params, "refresh_token")?;
        let (family, data) = self.spend(token, GrantKind::Refresh, client_id).await?;
        let grant: Refresh = serde_json::from_str(&data).map_err(unavailable)?;
        let checked = self.check_resource(resource, &grant.audience, mcp);
        self.audit_refused(client_id, &family, checked).await?;
        self.issue(client_id, &family, grant, OAuthAction::TokenRefreshed)
            .await
    }

    /// What the token request must match of the code it spent.
    fn check_code(
        &self,
        code: &Code,
        verifier: &str,
        redirect_uri: Option<&str>,
        resource: Option<&str>,
        mcp: &McpEndpoint,
    ) -> Result<(), Refused> {
        // RFC 7636 §4.1: 43 to 128 unreserved characters (checked after
        // the code is spent: a malformed verifier burns it too).
        let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        if !(43..=128).contains(&verifier.len()) || !verifier.chars().all(unreserved) {
            return Err(refused("invalid_grant", "code_verifier is malformed"));
        }
        if redirect_uri.is_some_and(|r| r != code.ask.redirect_uri) {
            return Err(refused(
                "invalid_grant",
                "redirect_uri differs from the authorization request's",
            ));
        }
        if s256(verifier) != code.ask.challenge {
            return Err(refused(
                "invalid_grant",
                "code_verifier does not match the code_challenge",
            ));
        }
        self.check_resource(resource, &code.ask.audience, mcp)
    }

    /// A spent secret refused is evidence (review: a code presented with
    /// the wrong verifier, as by whoever intercepted it, left no entry,
    /// and the log then blamed the rightful client's retry).
    async fn audit_refused(
        &self,
        client_id: &str,
        family: &str,
        checked: Result<(), Refused>,
    ) -> Result<(), Refused> {
        let Err(r) = checked else {
            return Ok(());
        };
        let mut entry = OAuthEntry::new(OAuthAction::GrantRefused, client_id);
        entry.family = Some(family);
        entry.reason = Some(r.description.clone());
        self.audit(entry).await.map_err(unavailable)?;
        Err(r)
    }

    /// A `resource` sent with a token request must name the one the grant
    /// is for (a token is never widened to another resource).
    fn check_resource(
        &self,
        resource: Option<&str>,
        audience: &str,
        mcp: &McpEndpoint,
    ) -> Result<(), Refused> {
        match resource {
            None => Ok(()),
            Some(r) => match self.audience_of(r, mcp) {
                Ok(a) if a == audience => Ok(()),
                Ok(_) => Err(refused(
                    "invalid_target",
                    "the grant is for another resource",
                )),
                Err(e) => Err(refused("invalid_target", e)),
            },
        }
    }

    /// Spend a code or refresh token of `client_id`: its family and data.
    /// Reuse, or a secret presented by another client, revokes the family.
    async fn spend(
        &self,
        presented: &str,
        kind: GrantKind,
        client_id: &str,
    ) -> Result<(String, String), Refused> {
        let now = unix_now();
        let what = if kind == GrantKind::Code {
            "code"
        } else {
            "refresh token"
        };
        match self
            .store
            .spend_oauth_grant(&hash(presented), kind, now)
            .await
        {
            Ok(Spent::Fresh {
                client_id: owner,
                family,
                data,
            }) if owner == client_id => Ok((family, data)),
            Ok(Spent::Fresh {
                client_id: owner,
                family,
                ..
            }) => {
                self.revoke_for_reuse(
                    &owner,
                    &family,
                    &format!("a {what} was presented by another client"),
                )
                .await;
                Err(refused(
                    "invalid_grant",
                    format!("the {what} was not issued to this client"),
                ))
            }
            Ok(Spent::Reused {
                client_id: owner,
                family,
            }) => {
                self.revoke_for_reuse(
                    &owner,
                    &family,
                    &format!("a spent {what} was presented again"),
                )
                .await;
                Err(refused(
                    "invalid_grant",
                    format!("the {what} was already used; the grant is revoked"),
                ))
            }
            Ok(Spent::Invalid) => Err(refused(
                "invalid_grant",
                format!("the {what} is unknown, expired or revoked"),
            )),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn revoke_for_reuse(&self, client_id: &str, family: &str, reason: &str) {
        // Once per family: a spent code replayed ten thousand times had
        // written ten thousand entries (re-review). A family already
        // revoked has its entry.
        if let Ok(false) = self.store.oauth_family_live(family, client_id).await {
            tracing::debug!(%client_id, %family, "a secret of a revoked OAuth grant was presented again");
            return;
        }
        let revoked = self.store.revoke_oauth_family(family, unix_now()).await;
        let mut entry = OAuthEntry::new(OAuthAction::ReuseDetected, client_id);
        entry.family = Some(family);
        entry.reason = Some(match &revoked {
            Ok(n) => format!("{reason}; grant revoked with {n} live access token(s)"),
            Err(e) => format!("{reason}; revoking the grant failed: {e}"),
        });
        tracing::warn!(%client_id, %family, %reason, "OAuth secret reused; grant revoked");
        let _ = self.audit(entry).await;
    }

    /// A new access token and refresh token for `grant`.
    async fn issue(
        &self,
        client_id: &str,
        family: &str,
        grant: Refresh,
        action: OAuthAction,
    ) -> Result<serde_json::Value, Refused> {
        let now = unix_now();
        let deadline = grant.person.deadline;
        if deadline <= now {
            return Err(refused(
                "invalid_grant",
                "the grant has ended; sign in again",
            ));
        }
        let expires_at = (now + self.cfg.access_token_ttl.as_secs() as i64).min(deadline);
        let access = portcullis_identity::token::generate().map_err(unavailable)?;
        let (refresh, refresh_hash) = secret().map_err(|_| unavailable("no randomness"))?;
        let subject = format!("agent:{client_id}");
        let principal = portcullis_identity::delegated_subject(&subject, &grant.person.subject);
        let mut entry = OAuthEntry::new(action, client_id);
        entry.principal = Some(principal);
        entry.person = Some(&grant.person.subject);
        entry.token_id = Some(access.hash.id());
        entry.family = Some(family);
        entry.resource = Some(&grant.resource);
        // Durable before the token exists: no token without its evidence.
        self.audit(entry).await.map_err(unavailable)?;
        self.store
            .insert_token(&NewTokenRow {
                hash: access.hash,
                subject: &subject,
                groups: &grant.person.groups,
                created_at: now,
                expires_at: Some(expires_at),
                on_behalf_of: Some(&grant.person.subject),
                audience: Some(&grant.audience),
                oauth_family: Some(family),
            })
            .await
            .map_err(|e| match e {
                // The person's bound on live tokens for agents holds here
                // too (a grant's own tokens count once, so only the
                // person's other tokens and grants can reach it). The
                // code or refresh token is spent: `invalid_grant` sends the
                // client to sign in again rather than retry a spent secret
                // (which would revoke the family as a reuse). The person's
                // name is not the client's to see.
                portcullis_store::StoreError::TooManyForAgents { max, .. } => refused(
                    "invalid_grant",
                    format!(
                        "the person already holds {max} live tokens for agents, the most \
                         allowed: they must revoke one (in the console) before this client \
                         can be given a token"
                    ),
                ),
                e => unavailable(e),
            })?;
        let row = OAuthGrantRow {
            hash: refresh_hash,
            kind: GrantKind::Refresh,
            client_id: client_id.to_owned(),
            family: family.to_owned(),
            data: serde_json::to_string(&grant).map_err(unavailable)?,
            created_at: now,
            expires_at: deadline,
        };
        self.store
            .insert_oauth_grant(&row)
            .await
            .map_err(unavailable)?;
        // A revocation racing this issue (a reused secret seen by another
        // request, an operator revoking the client) either revoked the rows
        // just stored or left a mark that is seen here.
        match self.store.oauth_family_live(family, client_id).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = self.store.revoke_oauth_family(family, now).await;
                return Err(refused("invalid_grant", "the grant was revoked"));
            }
            Err(e) => {
                let _ = self.store.revoke_oauth_family(family, now).await;
                return Err(unavailable(e));
            }
        }
        self.sweep_now_and_then();
        Ok(serde_json::json!({
            "access_token": access.secret,
            "token_type": "Bearer",
            "expires_in": expires_at - now,
            "refresh_token": refresh,
            "scope": SCOPE,
        }))
    }
}
