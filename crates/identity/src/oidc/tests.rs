//! One test per refusal rule, with real ES256 signatures.

use super::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const ISS: &str = "https://idp.test";
const NOW: i64 = 1_800_000_000;

struct Issuer {
    enc: EncodingKey,
    jwk: Jwk,
    public_pem: Vec<u8>,
}

fn issuer(kid: &str) -> Issuer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let enc = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    Issuer {
        enc,
        jwk,
        public_pem: pair.public_key_pem().into_bytes(),
    }
}

fn settings() -> IssuerSettings {
    IssuerSettings {
        issuer: ISS.into(),
        audiences: vec!["portcullis".into()],
        algorithms: vec![Algorithm::ES256, Algorithm::RS256],
        groups_claim: "groups".into(),
        subject_claim: "sub".into(),
        leeway_secs: 30,
        namespace: crate::Namespace::default(),
        clients: None,
    }
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": "portcullis", "sub": "alice",
        "exp": NOW + 600, "iat": NOW, "groups": ["dba", "dev"],
    })
}

fn sign(iss: &Issuer, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &iss.enc).unwrap()
}

/// The whole pipeline as the authenticator runs it.
fn check(token: &str, keys: &JwkSet) -> Result<Principal, OidcError> {
    check_as(settings(), token, keys)
}

fn check_as(s: IssuerSettings, token: &str, keys: &JwkSet) -> Result<Principal, OidcError> {
    let iss = unverified_issuer(token)?;
    if iss != s.issuer {
        return Err(OidcError::UnknownIssuer(iss));
    }
    let (alg, kid) = header_of(token, &s)?;
    let key = select_key(keys, kid.as_deref(), alg)?.ok_or(OidcError::UnknownKey {
        kid: kid.unwrap_or_default(),
        issuer: s.issuer.clone(),
    })?;
    verify(token, &s, alg, key, NOW)
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn keys_of(i: &Issuer) -> JwkSet {
    JwkSet {
        keys: vec![i.jwk.clone()],
    }
}

#[test]
fn good_token_yields_user_with_groups() {
    let i = issuer("k1");
    let p = check(&sign(&i, "k1", &claims()), &keys_of(&i)).unwrap();
    assert_eq!(p.subject, "user:alice");
    assert_eq!(p.kind, PrincipalKind::Human);
    assert_eq!(p.groups, vec!["dba", "dev"]);
    assert!(
        matches!(&p.via, AuthMethod::Oidc { issuer, expires_at: Some(_) } if issuer == ISS),
        "{:?}",
        p.via
    );
}

#[test]
fn client_credentials_token_is_an_agent() {
    let i = issuer("k1");
    let mut c = claims();
    c["sub"] = json!("ci-bot");
    c["client_id"] = json!("ci-bot");
    c.as_object_mut().unwrap().remove("groups");
    let p = check(&sign(&i, "k1", &c), &keys_of(&i)).unwrap();
    assert_eq!(p.subject, "agent:ci-bot");
    assert_eq!(p.kind, PrincipalKind::Agent);
    assert!(p.groups.is_empty());
}

/// `agent_clients`: with the list, the client a token was issued to
/// decides. Without it a provider that let a person's `sub` equal a
/// client's id (or let anyone register a client) named an agent, and one
/// whose machine tokens carry a `sub` of their own (Keycloak's service
/// accounts) named machines people.
#[test]
fn with_agent_clients_the_tokens_client_decides() {
    use crate::oidc::{AgentClient, ClientRoles};
    let i = issuer("k1");
    let listed = IssuerSettings {
        clients: Some(ClientRoles {
            agents: vec![
                AgentClient {
                    client: "ci-bot".into(),
                    subject: "ci-bot".into(),
                },
                AgentClient {
                    client: "kc-bot".into(),
                    subject: "5f0c-service-account".into(),
                },
            ],
            people: vec!["portcullis-cli".into()],
        }),
        ..settings()
    };
    let token = |pairs: &[(&str, Value)]| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("groups");
        for (k, v) in pairs {
            c[*k] = v.clone();
        }
        sign(&i, "k1", &c)
    };
    let s = |v: &str| json!(v);
    let as_listed = |t: &str| check_as(listed.clone(), t, &keys_of(&i)).map(|p| p.subject);
    // Client credentials of a listed client.
    let t = token(&[("sub", s("ci-bot")), ("client_id", s("ci-bot"))]);
    assert_eq!(as_listed(&t), Ok("agent:ci-bot".into()));
    // A service account with a `sub` of its own, its client in `azp`.
    let kc = token(&[("sub", s("5f0c-service-account")), ("azp", s("kc-bot"))]);
    assert_eq!(as_listed(&kc), Ok("agent:kc-bot".into()));
    // Okta names the client in `cid`: a person through an agent's
    // client is refused as with `azp`, a client's own token is the agent.
    let okta = token(&[("sub", s("ci-bot")), ("cid", s("ci-bot"))]);
    assert_eq!(as_listed(&okta), Ok("agent:ci-bot".into()));
    let okta = token(&[("sub", s("alice@example.com")), ("cid", s("ci-bot"))]);
    assert_eq!(
        as_listed(&okta),
        Err(OidcError::NotTheAgent("ci-bot".into()))
    );
    // Without the list that token was a person's.
    assert_eq!(
        check_as(settings(), &kc, &keys_of(&i)).map(|p| p.subject),
        Ok("user:5f0c-service-account".into())
    );
    // A person signed in through an agent's client is refused, not made
    // the agent (found in review: the first version named any token of a
    // listed client the agent, groups and all).
    for (sub, client) in [
        ("alice", "ci-bot"),
        ("alice", "kc-bot"),
        ("ci-bot", "kc-bot"),
    ] {
        let t = token(&[("sub", s(sub)), ("azp", s(client))]);
        assert_eq!(as_listed(&t), Err(OidcError::NotTheAgent(client.into())));
    }
    // People through a people client, whatever their `sub`.
    for sub in ["alice", "ci-bot"] {
        let t = token(&[("sub", s(sub)), ("client_id", s("portcullis-cli"))]);
        assert_eq!(as_listed(&t), Ok(format!("user:{sub}")));
    }
    // An ID token names its client in its one audience.
    let t = token(&[("aud", s("portcullis-cli"))]);
    assert_eq!(
        check_as(
            IssuerSettings {
                audiences: vec!["portcullis-cli".into()],
                ..listed.clone()
            },
            &t,
            &keys_of(&i)
        )
        .map(|p| p.subject),
        Ok("user:alice".into())
    );
    // Any other client: refused, however its `sub` looks (the old rule
    // made a client-credentials token `agent:rogue`, and a machine token
    // with a `sub` of its own a person).
    for sub in ["rogue", "6a1d-machine"] {
        let t = token(&[("sub", s(sub)), ("client_id", s("rogue"))]);
        assert_eq!(as_listed(&t), Err(OidcError::UnknownClient("rogue".into())));
    }
    // No client named: only the gateway's audience, which no client is.
    assert_eq!(
        as_listed(&token(&[])),
        Err(OidcError::UnknownClient("portcullis".into()))
    );
    let mut c = claims();
    c["aud"] = json!(["portcullis", "other"]);
    assert_eq!(
        check_as(listed.clone(), &sign(&i, "k1", &c), &keys_of(&i)).map(|p| p.subject),
        Err(OidcError::NoClient)
    );
    // A claim there but unusable is refused, not skipped for the next
    // (review: `client_id: 7` fell through to `azp`).
    for bad in [json!(7), json!(""), json!(["ci-bot"])] {
        let t = token(&[
            ("sub", s("ci-bot")),
            ("client_id", bad),
            ("azp", s("ci-bot")),
        ]);
        assert_eq!(as_listed(&t), Err(OidcError::BadClaim("client_id".into())));
    }
    // Under a namespace, as any agent.
    let spaced = IssuerSettings {
        namespace: crate::Namespace::Own("partner".into()),
        ..listed.clone()
    };
    assert_eq!(
        check_as(spaced, &kc, &keys_of(&i)).map(|p| p.subject),
        Ok("agent:partner/kc-bot".into())
    );
}

/// `agent:NAME@person` is the form of an agent acting for a person: a
/// client id with `@` would take a delegated agent's principal.
#[test]
fn a_client_cannot_name_itself_a_delegated_agent() {
    let i = issuer("k1");
    let mut c = claims();
    c["sub"] = json!("claude@alice");
    c["client_id"] = json!("claude@alice");
    assert_eq!(
        check(&sign(&i, "k1", &c), &keys_of(&i)),
        Err(OidcError::BadClaim("sub".into()))
    );
    // A person's `@` (an email as subject) stays a person's.
    let mut c = claims();
    c["sub"] = json!("alice@example.com");
    let p = check(&sign(&i, "k1", &c), &keys_of(&i)).unwrap();
    assert_eq!(p.kind, PrincipalKind::Human);
}

#[test]
fn alg_none_is_refused() {
    let i = issuer("k1");
    let t = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&claims())
    );
    assert_eq!(check(&t, &keys_of(&i)), Err(OidcError::AlgorithmNone));
    let t = format!("{}.{}.", b64(&json!({"alg": "NONE"})), b64(&claims()));
    assert_eq!(check(&t, &keys_of(&i)), Err(OidcError::AlgorithmNone));
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    // Algorithm confusion: an attacker signs an HMAC with the issuer's
    // public key as the secret, hoping the verifier uses the key as given.
    let i = issuer("k1");
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&i.public_pem)).unwrap();
    assert!(matches!(
        check(&t, &keys_of(&i)),
        Err(OidcError::AlgorithmNotAllowed { alg, .. }) if alg == "HS256"
    ));
    // Even if a careless configuration listed it.
    let mut s = settings();
    s.algorithms.push(Algorithm::HS256);
    assert!(matches!(
        header_of(&t, &s),
        Err(OidcError::AlgorithmNotAllowed { .. })
    ));
}

#[test]
fn expired_and_not_yet_valid_are_refused() {
    let i = issuer("k1");
    let mut c = claims();
    c["exp"] = json!(NOW - 31);
    assert_eq!(
        check(&sign(&i, "k1", &c), &keys_of(&i)),
        Err(OidcError::Expired)
    );
    // Inside the leeway: accepted.
    c["exp"] = json!(NOW - 10);
    assert!(check(&sign(&i, "k1", &c), &keys_of(&i)).is_ok());
    let mut c = claims();
    c["nbf"] = json!(NOW + 120);
    assert_eq!(
        check(&sign(&i, "k1", &c), &keys_of(&i)),
        Err(OidcError::NotYetValid)
    );
    // Extremes do not overflow (review: `exp` of i64::MAX panicked a
    // debug build's connection task).
    let mut c = claims();
    c["exp"] = json!(i64::MAX);
    c["nbf"] = json!(i64::MIN);
    let _ = check(&sign(&i, "k1", &c), &keys_of(&i));
    c["nbf"] = json!(i64::MAX);
    assert!(check(&sign(&i, "k1", &c), &keys_of(&i)).is_err());
}

#[test]
fn wrong_issuer_and_audience_are_refused() {
    let i = issuer("k1");
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert_eq!(
        check(&sign(&i, "k1", &c), &keys_of(&i)),
        Err(OidcError::UnknownIssuer("https://evil.test".into()))
    );
    let mut c = claims();
    c["aud"] = json!(["someone-else"]);
    assert_eq!(
        check(&sign(&i, "k1", &c), &keys_of(&i)),
        Err(OidcError::WrongAudience)
    );
    // One of several audiences is enough.
    c["aud"] = json!(["someone-else", "portcullis"]);
    assert!(check(&sign(&i, "k1", &c), &keys_of(&i)).is_ok());
}

#[test]
fn unknown_kid_and_foreign_key_are_refused() {
    let i = issuer("k1");
    let other = issuer("k1");
    assert!(matches!(
        check(&sign(&i, "k9", &claims()), &keys_of(&i)),
        Err(OidcError::UnknownKey { kid, .. }) if kid == "k9"
    ));
    // Another issuer's key, presented under this issuer's kid and iss.
    assert_eq!(
        check(&sign(&other, "k1", &claims()), &keys_of(&i)),
        Err(OidcError::BadSignature)
    );
}

#[test]
fn tampered_payload_is_refused() {
    let i = issuer("k1");
    let t = sign(&i, "k1", &claims());
    let mut parts: Vec<&str> = t.split('.').collect();
    let mut c = claims();
    c["sub"] = json!("admin");
    let forged = b64(&c);
    parts[1] = &forged;
    assert_eq!(
        check(&parts.join("."), &keys_of(&i)),
        Err(OidcError::BadSignature)
    );
}

#[test]
fn missing_claims_are_refused() {
    let i = issuer("k1");
    for claim in ["sub", "exp", "aud"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(claim);
        let got = check(&sign(&i, "k1", &c), &keys_of(&i));
        assert_eq!(got, Err(OidcError::MissingClaim(claim.into())), "{claim}");
    }
    let mut c = claims();
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        check(&sign(&i, "k1", &c), &keys_of(&i)),
        Err(OidcError::MissingClaim("iss".into()))
    );
    let mut c = claims();
    c["groups"] = json!({"not": "a list"});
    assert_eq!(
        check(&sign(&i, "k1", &c), &keys_of(&i)),
        Err(OidcError::BadClaim("groups".into()))
    );
    let mut c = claims();
    c["sub"] = json!("has space");
    assert_eq!(
        check(&sign(&i, "k1", &c), &keys_of(&i)),
        Err(OidcError::BadClaim("sub".into()))
    );
}

#[test]
fn oversized_and_malformed_tokens_are_refused() {
    let i = issuer("k1");
    let mut c = claims();
    c["pad"] = json!("x".repeat(MAX_TOKEN_LEN));
    assert!(matches!(
        check(&sign(&i, "k1", &c), &keys_of(&i)),
        Err(OidcError::TooLarge { .. })
    ));
    for bad in ["a.b", "a.b.c.d", "eyJ.eyJ.x", "!!.??.x"] {
        assert!(
            matches!(check(bad, &keys_of(&i)), Err(OidcError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn key_published_for_another_algorithm_is_refused() {
    let i = issuer("k1");
    let mut jwk = i.jwk.clone();
    jwk.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS256);
    let keys = JwkSet { keys: vec![jwk] };
    assert!(matches!(
        check(&sign(&i, "k1", &claims()), &keys),
        Err(OidcError::KeyAlgorithmMismatch { .. })
    ));
}

#[test]
fn kid_may_be_omitted_only_with_a_single_key() {
    let i = issuer("k1");
    let j = issuer("k2");
    let t = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &i.enc).unwrap();
    assert!(check(&t, &keys_of(&i)).is_ok());
    let both = JwkSet {
        keys: vec![i.jwk.clone(), j.jwk.clone()],
    };
    assert_eq!(check(&t, &both), Err(OidcError::MissingKeyId));
}

#[test]
fn error_messages_never_echo_the_token() {
    let i = issuer("k1");
    let mut c = claims();
    c["aud"] = json!("wrong");
    let t = sign(&i, "k1", &c);
    let msg = check(&t, &keys_of(&i)).unwrap_err().to_string();
    let sig = t.rsplit('.').next().unwrap();
    assert!(!msg.contains(sig) && !msg.contains(&t[..20]));
}

/// A token with a hand-made header, signed for real.
fn sign_with_header(i: &Issuer, header: &Value, claims: &Value) -> String {
    let msg = format!("{}.{}", b64(header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &i.enc, Algorithm::ES256).unwrap();
    format!("{msg}.{sig}")
}

#[test]
fn unknown_critical_extensions_are_refused() {
    // RFC 7515 §4.1.11.
    let i = issuer("k1");
    let h = json!({"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1});
    let t = sign_with_header(&i, &h, &claims());
    assert_eq!(
        check(&t, &keys_of(&i)),
        Err(OidcError::CriticalHeader("exp".into()))
    );
    let h = json!({"alg": "ES256", "kid": "k1", "crit": []});
    let t = sign_with_header(&i, &h, &claims());
    assert!(matches!(
        check(&t, &keys_of(&i)),
        Err(OidcError::CriticalHeader(_))
    ));
    // The same header without `crit` verifies: the signature is good.
    let h = json!({"alg": "ES256", "kid": "k1"});
    assert!(check(&sign_with_header(&i, &h, &claims()), &keys_of(&i)).is_ok());
}

#[test]
fn tokens_typed_as_something_else_are_refused() {
    // RFC 8725 §3.11: explicit typing keeps one kind of JWT from being
    // used as another.
    let i = issuer("k1");
    for typ in ["JWT", "at+jwt", "application/at+JWT"] {
        let h = json!({"alg": "ES256", "kid": "k1", "typ": typ});
        assert!(
            check(&sign_with_header(&i, &h, &claims()), &keys_of(&i)).is_ok(),
            "{typ}"
        );
    }
    for typ in [json!("logout+jwt"), json!("dpop+jwt"), json!(7)] {
        let h = json!({"alg": "ES256", "kid": "k1", "typ": typ});
        assert!(
            matches!(
                check(&sign_with_header(&i, &h, &claims()), &keys_of(&i)),
                Err(OidcError::WrongType(_))
            ),
            "{typ}"
        );
    }
}

#[test]
fn keys_not_published_for_verifying_are_refused() {
    // RFC 7517 §4.2 (`use`) and §4.3 (`key_ops`).
    let i = issuer("k1");
    let t = sign(&i, "k1", &claims());
    let mut enc = i.jwk.clone();
    enc.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Encryption);
    assert_eq!(
        check(&t, &JwkSet { keys: vec![enc] }),
        Err(OidcError::KeyNotForSigning("k1".into()))
    );
    let mut ops = i.jwk.clone();
    ops.common.key_operations = Some(vec![jsonwebtoken::jwk::KeyOperations::Sign]);
    assert_eq!(
        check(&t, &JwkSet { keys: vec![ops] }),
        Err(OidcError::KeyNotForSigning("k1".into()))
    );
    let mut sig = i.jwk.clone();
    sig.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    sig.common.key_operations = Some(vec![jsonwebtoken::jwk::KeyOperations::Verify]);
    assert!(check(&t, &JwkSet { keys: vec![sig] }).is_ok());
}

#[test]
fn a_namespaced_issuer_names_people_agents_and_groups_under_its_namespace() {
    let i = issuer("k1");
    let own = IssuerSettings {
        namespace: crate::Namespace::Own("partner".into()),
        ..settings()
    };
    let p = check_as(own.clone(), &sign(&i, "k1", &claims()), &keys_of(&i)).unwrap();
    assert_eq!(p.subject, "user:partner/alice");
    assert_eq!(p.kind, PrincipalKind::Human);
    assert_eq!(p.groups, vec!["partner/dba", "partner/dev"]);

    let mut c = claims();
    c["sub"] = json!("ci-bot");
    c["client_id"] = json!("ci-bot");
    let p = check_as(own.clone(), &sign(&i, "k1", &c), &keys_of(&i)).unwrap();
    assert_eq!(p.subject, "agent:partner/ci-bot");
    assert_eq!(p.kind, PrincipalKind::Agent);

    // A name that already holds a `/` could pose as another namespace's.
    for sub in ["corp/alice", "partner/alice"] {
        let mut c = claims();
        c["sub"] = json!(sub);
        for s in [own.clone(), settings()] {
            assert!(
                matches!(
                    check_as(s, &sign(&i, "k1", &c), &keys_of(&i)),
                    Err(OidcError::BadClaim(_))
                ),
                "{sub}"
            );
        }
    }
}

#[test]
fn a_bare_issuer_cannot_name_a_group_in_another_namespace() {
    let i = issuer("k1");
    let bare = IssuerSettings {
        namespace: crate::Namespace::Bare {
            reserved: vec!["partner".into()],
        },
        ..settings()
    };
    let mut c = claims();
    c["groups"] = json!(["dev", "partner/dba"]);
    let err = check_as(bare.clone(), &sign(&i, "k1", &c), &keys_of(&i)).unwrap_err();
    assert_eq!(err.to_string(), r#"claim "groups" has an unusable value"#);
    // The same claim as one space-separated string.
    c["groups"] = json!("dev partner/dba");
    assert!(check_as(bare.clone(), &sign(&i, "k1", &c), &keys_of(&i)).is_err());
    // A group that merely begins with the same letters is its own.
    c["groups"] = json!(["partners/dba", "/partner/dba"]);
    let p = check_as(bare, &sign(&i, "k1", &c), &keys_of(&i)).unwrap();
    assert_eq!(p.groups, vec!["/partner/dba", "partners/dba"]);
}
