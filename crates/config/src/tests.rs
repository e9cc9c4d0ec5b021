use super::*;

const EXAMPLE: &str = include_str!("../../../portcullis.example.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/portcullis/portcullis.toml"))
}

const MINIMAL: &str = r#"
[gateway]
listen = "127.0.0.1:8443"
cert = "s.pem"
key = "s.key"
"#;

fn with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}")
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_documented_example_parses() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.gateway.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(c.gateway.cert, Path::new("/etc/portcullis/server.pem"));
    assert_eq!(c.store.path, Path::new("/etc/portcullis/portcullis.db"));
    assert_eq!(c.limits.max_request_body_bytes, 10 * 1024 * 1024);
    let demo = c.connection("demo-api").unwrap();
    assert_eq!(demo.timeout, Duration::from_secs(30));
    let Target::Http(http) = &demo.target else {
        panic!("http")
    };
    assert_eq!(http.tls, UpstreamTls::Verify);
    let cred = http.credential.as_ref().unwrap();
    assert_eq!(cred.header.as_str(), "x-api-key");
    assert_eq!(
        cred.secret,
        SecretRef::File("/etc/portcullis/secrets/demo-api-key".into())
    );
    assert_eq!(c.grants[0].name, "quickstart-demo");
    assert_eq!(c.public_url(), "https://localhost:8443");
}

#[test]
fn minimal_config_has_sane_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.connections.is_empty() && c.grants.is_empty());
    assert_eq!(c.limits.max_header_bytes, 16384);
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.max_connections_per_peer, 1_000);
    assert_eq!(c.limits.max_agent_streams_per_caller, 250);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.gateway.admin_listen, None);
}

#[test]
fn an_agent_stream_share_is_within_what_an_agent_serves() {
    for bad in ["0", "1001"] {
        let e = err(&with(&format!(
            "[limits]\nmax_agent_streams_per_caller = {bad}\n"
        )));
        assert!(e.contains("limits.max_agent_streams_per_caller"), "{e}");
    }
    let c = parse(&with("[limits]\nmax_agent_streams_per_caller = 1000\n")).unwrap();
    assert_eq!(c.limits.max_agent_streams_per_caller, 1000);
}

#[test]
fn unknown_keys_name_file_and_line() {
    let e = err(&with("[limits]\nmax_body = 3\n"));
    assert!(e.contains("/etc/portcullis/portcullis.toml"), "{e}");
    assert!(e.contains("max_body"), "{e}");
    assert!(e.contains("line"), "{e}");
}

#[test]
fn bad_profile_lists_valid_ones() {
    let e = err(&with("[gateway.tls]\nprofile = \"old\"\n"));
    assert!(
        e.contains("modern") && e.contains("intermediate") && e.contains("custom"),
        "{e}"
    );
}

#[test]
fn tls_knobs_without_custom_name_the_key() {
    let text = MINIMAL.replace(
        "key = \"s.key\"",
        "key = \"s.key\"\ntls = { profile = \"modern\", groups = [\"X25519\"] }",
    );
    let e = err(&text);
    assert!(
        e.contains("`gateway.tls`") && e.contains("only valid with"),
        "{e}"
    );
}

fn conn(body: &str) -> String {
    with(&format!(
        "[[connections]]\nname = \"api\"\ntype = \"http\"\n{body}\n"
    ))
}

#[test]
fn plaintext_upstream_needs_explicit_disable() {
    let e = err(&conn("url = \"http://10.0.0.1:80\""));
    assert!(
        e.contains("connections[0].url") && e.contains("tls = \"disable\""),
        "{e}"
    );
    let c = parse(&conn("url = \"http://10.0.0.1:80\"\ntls = \"disable\"")).unwrap();
    let Target::Http(h) = &c.connections[0].target else {
        panic!()
    };
    assert_eq!(h.tls, UpstreamTls::Disable);
    let e = err(&conn("url = \"https://x\"\ntls = \"disable\""));
    assert!(e.contains("contradicts"), "{e}");
}

#[test]
fn inline_secret_is_refused_without_echo() {
    let e = err(&conn(
        "url = \"https://x\"\ncredential = { header = \"x-key\", secret = \"canary-inline-secret\" }",
    ));
    assert!(e.contains("connections[0].credential.secret"), "{e}");
    assert!(!e.contains("canary-inline-secret"), "{e}");
}

#[test]
fn hop_by_hop_credential_header_refused() {
    let e = err(&conn(
        "url = \"https://x\"\ncredential = { header = \"Connection\", secret = \"env:X\" }",
    ));
    assert!(e.contains("cannot carry a credential"), "{e}");
}

#[test]
fn connection_names_are_checked_and_unique() {
    let e = err(&with(
        "[[connections]]\nname = \"Bad Name\"\ntype = \"http\"\nurl = \"https://x\"\n",
    ));
    assert!(e.contains("connections[0].name"), "{e}");
    let twice = "[[connections]]\nname = \"a\"\ntype = \"http\"\nurl = \"https://x\"\n";
    let e = err(&with(&format!("{twice}{twice}")));
    assert!(
        e.contains("connections[1].name") && e.contains("twice"),
        "{e}"
    );
    let e = err(&conn("url = \"https://x\"").replace("\"http\"", "\"ftp\""));
    assert!(
        e.contains("connections[0].type") && e.contains("\"http\""),
        "{e}"
    );
}

#[test]
fn grants_must_reference_defined_connections() {
    let text = conn("url = \"https://x\"")
        + "[[grants]]\nprincipals = [\"agent:a\"]\nconnections = [\"nope\"]\n";
    let e = err(&text);
    assert!(
        e.contains("grants[0].connections") && e.contains("\"nope\"") && e.contains("api"),
        "{e}"
    );
}

#[test]
fn grants_need_a_subject_and_valid_principals() {
    let e = err(&(conn("url = \"https://x\"") + "[[grants]]\nconnections = [\"api\"]\n"));
    assert!(e.contains("grants[0].principals"), "{e}");
    let e = err(&(conn("url = \"https://x\"")
        + "[[grants]]\nprincipals = [\"alice\"]\nconnections = [\"api\"]\n"));
    assert!(e.contains("KIND:NAME"), "{e}");
}

#[test]
fn durations_are_explained() {
    let e = err(&with("[limits]\nidle_timeout = \"soon\"\n"));
    assert!(
        e.contains("limits.idle_timeout") && e.contains("30s"),
        "{e}"
    );
}

#[test]
fn the_store_write_timeout_is_bounded() {
    assert_eq!(
        parse(MINIMAL).unwrap().store.write_timeout,
        Duration::from_millis(800)
    );
    let c = parse(&with("[store]\nwrite_timeout = \"2s\"\n")).unwrap();
    assert_eq!(c.store.write_timeout, Duration::from_secs(2));
    for bad in ["0s", "5m"] {
        let e = err(&with(&format!("[store]\nwrite_timeout = \"{bad}\"\n")));
        assert!(e.contains("store.write_timeout"), "{e}");
    }
}

fn pg(body: &str) -> String {
    with(&format!(
        "[[connections]]\nname = \"db\"\ntype = \"postgres\"\n{body}\n"
    ))
}

#[test]
fn postgres_connections() {
    let c = parse(&pg("url = \"postgres://app@db:5433/shop?sslrootcert=pg-ca.pem\"\npassword = \"env:PGPW\"\naccess = \"read-only\"")).unwrap();
    let conn = &c.connections[0];
    let Target::Postgres(t) = &conn.target else {
        panic!()
    };
    assert_eq!(
        (
            t.user.as_str(),
            t.host.as_str(),
            t.port,
            t.database.as_str()
        ),
        ("app", "db", 5433, "shop")
    );
    assert_eq!(t.access, Access::ReadOnly);
    assert_eq!(t.tls, UpstreamTls::Verify);
    assert_eq!(
        conn.ca_file.as_deref(),
        Some(Path::new("/etc/portcullis/pg-ca.pem"))
    );

    let e = err(&pg(
        "url = \"postgres://app:canarypw@db/shop\"\npassword = \"env:X\"",
    ));
    assert!(
        e.contains("connections[0].url") && e.contains("may not hold a password"),
        "{e}"
    );
    assert!(!e.contains("canarypw"), "{e}");
    let e = err(&pg("url = \"postgres://app@db/shop\""));
    assert!(e.contains("connections[0].password"), "{e}");
    let e = err(&pg(
        "url = \"postgres://app@db/shop?sslmode=require\"\npassword = \"env:X\"",
    ));
    assert!(e.contains("verify-full"), "{e}");
    let e = err(&pg(
        "url = \"postgres://app@db/shop\"\npassword = \"env:X\"\naccess = \"read-mostly\"",
    ));
    assert!(
        e.contains("connections[0].access") && e.contains("read-only"),
        "{e}"
    );
    let e = err(&pg(
        "url = \"postgres://app@db/shop\"\npassword = \"env:X\"\ncredential = { header = \"x\", secret = \"env:Y\" }",
    ));
    assert!(
        e.contains("connections[0].credential") && e.contains("postgres"),
        "{e}"
    );
}

#[test]
fn postgres_listener_section() {
    let c = parse(&with("[postgres]\nlisten = \"127.0.0.1:15432\"\n")).unwrap();
    let p = c.postgres.unwrap();
    assert_eq!(p.listen.port(), 15432);
    assert_eq!(p.max_message_bytes, 16 * 1024 * 1024);
    assert!(!p.strict_roles);
}

#[test]
fn postgres_strict_roles() {
    let c = parse(&with(
        "[postgres]\nlisten = \"127.0.0.1:15432\"\nstrict_roles = true\n",
    ))
    .unwrap();
    assert!(c.postgres.unwrap().strict_roles);
    let e = err(&with(
        "[postgres]\nlisten = \"127.0.0.1:15432\"\nstrict_roles = \"yes\"\n",
    ));
    assert!(e.contains("strict_roles"), "{e}");
}

#[test]
fn masking_rules() {
    let c = parse(&conn("url = \"https://x\"\n[masking]\nhash_key = \"env:MASK_KEY\"\n[[masking.rules]]\nname = \"pii\"\nconnections = [\"api\"]\nactions = { card = { action = \"partial\", keep_last = 4 } }\n[[masking.rules.fields]]\nkeys = [\"password\"]\n")).unwrap();
    assert_eq!(c.masking.rules.len(), 1);
    assert_eq!(c.masking.hash_key, Some(SecretRef::Env("MASK_KEY".into())));
    let e = err(&conn(
        "url = \"https://x\"\n[[masking.rules]]\nconnections = [\"nope\"]\n",
    ));
    assert!(e.contains("masking.rules[0].connections"), "{e}");
    let e = err(&conn(
        "url = \"https://x\"\n[[masking.rules]]\ndetectors = [\"emial\"]\n",
    ));
    assert!(
        e.contains("rules[0].detectors") && e.contains("email"),
        "{e}"
    );
    let e = err(&conn(
        "url = \"https://x\"\n[[masking.rules]]\non_error = \"shrug\"\n",
    ));
    assert!(e.contains("refuse") && e.contains("mask_as_text"), "{e}");
}

#[test]
fn oidc_issuers() {
    let c = parse(&with(
        r#"
[[oidc]]
issuer = "https://idp.example.com"
audiences = ["portcullis"]
login_client_id = "portcullis-cli"
"#,
    ))
    .unwrap();
    let o = &c.oidc[0];
    assert_eq!(o.settings.issuer, "https://idp.example.com");
    assert_eq!(o.settings.groups_claim, "groups");
    assert_eq!(o.settings.subject_claim, "sub");
    assert_eq!(o.settings.leeway_secs, 60);
    assert_eq!(o.refresh_interval, Duration::from_secs(3600));
    assert_eq!(o.login.as_ref().unwrap().scopes, "openid offline_access");

    let base = "[[oidc]]\nissuer = \"https://i\"\naudiences = [\"a\"]\n";
    let e = err(&with(&format!("{base}algorithms = [\"HS256\"]\n")));
    assert!(
        e.contains("oidc[0].algorithms") && e.contains("symmetric"),
        "{e}"
    );
    let e = err(&with(&format!("{base}algorithms = [\"none\"]\n")));
    assert!(e.contains("oidc[0].algorithms"), "{e}");
    let e = err(&with(
        "[[oidc]]\nissuer = \"http://i\"\naudiences = [\"a\"]\n",
    ));
    assert!(e.contains("oidc[0].issuer") && e.contains("https"), "{e}");
    let e = err(&with("[[oidc]]\nissuer = \"https://i\"\naudiences = []\n"));
    assert!(e.contains("oidc[0].audiences"), "{e}");
    let e = err(&with(&format!("{base}refresh_interval = \"1s\"\n")));
    assert!(e.contains("oidc[0].refresh_interval"), "{e}");
    let e = err(&with(&format!("{base}\n{base}")));
    assert!(e.contains("oidc[1].issuer"), "{e}");
}

#[test]
fn oidc_issuers_name_people_apart_unless_told_otherwise() {
    use portcullis_identity::Namespace;
    let issuer = |url: &str, extra: &str| {
        format!("[[oidc]]\nissuer = \"{url}\"\naudiences = [\"a\"]\n{extra}\n")
    };
    // Two issuers naming people bare, neither saying so: refused, with
    // what to write instead.
    let e = err(&with(&format!(
        "{}{}",
        issuer("https://corp", ""),
        issuer("https://partner", "")
    )));
    assert!(
        e.contains("oidc[0].namespace")
            && e.contains("https://partner")
            && e.contains("namespace = \"\""),
        "{e}"
    );
    // One bare, the other written bare on purpose: still refused, since
    // the first did not say so.
    let e = err(&with(&format!(
        "{}{}",
        issuer("https://corp", ""),
        issuer("https://partner", "namespace = \"\"")
    )));
    assert!(e.contains("oidc[0].namespace"), "{e}");
    // Both on purpose: accepted, both bare.
    let c = parse(&with(&format!(
        "{}{}",
        issuer("https://corp", "namespace = \"\""),
        issuer("https://partner", "namespace = \"\"")
    )))
    .unwrap();
    assert!(
        c.oidc
            .iter()
            .all(|o| o.settings.namespace == Namespace::default())
    );
    // One bare, one namespaced: the bare one may not name the other's
    // groups.
    let c = parse(&with(&format!(
        "{}{}",
        issuer("https://corp", ""),
        issuer("https://partner", "namespace = \"partner\"")
    )))
    .unwrap();
    assert_eq!(
        c.oidc[0].settings.namespace,
        Namespace::Bare {
            reserved: vec!["partner".into()]
        }
    );
    assert_eq!(
        c.oidc[1].settings.namespace,
        Namespace::Own("partner".into())
    );
    // One namespace, one provider.
    let e = err(&with(&format!(
        "{}{}",
        issuer("https://corp", "namespace = \"partner\""),
        issuer("https://partner", "namespace = \"partner\"")
    )));
    assert!(
        e.contains("oidc[1].namespace") && e.contains("https://corp"),
        "{e}"
    );
    // `[saml]` is a provider like the others.
    let saml = |extra: &str| format!("[saml]\nidp_metadata = \"idp.xml\"\n{extra}\n");
    let e = err(&with(&format!(
        "{}{}",
        issuer("https://corp", ""),
        saml("")
    )));
    assert!(e.contains("[saml]") && e.contains("namespace"), "{e}");
    let e = err(&with(&format!(
        "{}{}",
        issuer("https://corp", "namespace = \"x\""),
        saml("namespace = \"x\"")
    )));
    assert!(e.contains("saml.namespace"), "{e}");
    let c = parse(&with(&format!(
        "{}{}",
        issuer("https://corp", ""),
        saml("namespace = \"staff\"")
    )))
    .unwrap();
    assert_eq!(
        c.oidc[0].settings.namespace,
        Namespace::Bare {
            reserved: vec!["staff".into()]
        }
    );
    assert!(
        parse(&with(&format!(
            "{}{}",
            issuer("https://corp", "namespace = \"\""),
            saml("namespace = \"\"")
        )))
        .is_ok()
    );
    // What the store compares between starts: empty for the defaults,
    // and changed by a namespace or by the claims names come from.
    let naming = |a: &str, b: &str| {
        parse(&with(&format!(
            "{}{}",
            issuer("https://corp", a),
            issuer("https://partner", b)
        )))
        .unwrap()
        .naming(None)
    };
    assert_eq!(parse(MINIMAL).unwrap().naming(None), "");
    let plain = naming("namespace = \"\"", "namespace = \"\"");
    // A provider swapped for another is a change too (found in review).
    let swapped = parse(&with(&format!(
        "{}{}",
        issuer("https://corp", "namespace = \"\""),
        issuer("https://other", "namespace = \"\"")
    )))
    .unwrap()
    .naming(None);
    assert_ne!(plain, swapped);
    let saml = parse(&with("[saml]\nidp_metadata = \"idp.xml\"\n")).unwrap();
    assert_ne!(
        saml.naming(Some("https://idp-a")),
        saml.naming(Some("https://idp-b"))
    );
    let spaced = naming("", "namespace = \"partner\"");
    let renamed = naming("", "namespace = \"partner\"\nsubject_claim = \"email\"");
    let regrouped = naming("", "namespace = \"partner\"\ngroups_claim = \"roles\"");
    let home_renamed = naming("subject_claim = \"email\"", "namespace = \"partner\"");
    let all = [&plain, &spaced, &renamed, &regrouped, &home_renamed];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
    for bad in ["Partner", "a/b", "a:b", &"x".repeat(33)] {
        let e = err(&with(&issuer(
            "https://partner",
            &format!("namespace = \"{bad}\""),
        )));
        assert!(e.contains("oidc[0].namespace"), "{bad}: {e}");
    }
    // A grant may name a namespaced person; not a malformed one.
    let grant = |p: &str| {
        conn("url = \"https://x\"")
            + &format!("[[grants]]\nprincipals = [\"{p}\"]\nconnections = [\"api\"]\n")
    };
    for good in [
        "user:partner/alice",
        "agent:claude@partner/alice",
        "user:alice",
    ] {
        assert!(parse(&grant(good)).is_ok(), "{good}");
    }
    for bad in ["user:partner/", "user:Partner/alice", "user:a/b/c"] {
        assert!(err(&grant(bad)).contains("grants[0].principals"), "{bad}");
    }
}

#[test]
fn client_auth_per_listener() {
    let c = parse(&MINIMAL.replace(
        "key = \"s.key\"",
        "key = \"s.key\"\nclient_auth = { mode = \"required\", ca_file = \"clients.pem\", principal_from = [\"cn\"] }",
    ))
    .unwrap();
    let a = &c.gateway.client_auth;
    assert_eq!(a.mode, ClientCertMode::Required);
    assert_eq!(
        a.ca_file.as_deref(),
        Some(Path::new("/etc/portcullis/clients.pem"))
    );
    assert_eq!(a.principal_from, vec![CertName::CommonName]);
    assert_eq!(
        parse(MINIMAL).unwrap().gateway.client_auth,
        ClientAuth::default()
    );

    let e = err(&MINIMAL.replace(
        "key = \"s.key\"",
        "key = \"s.key\"\nclient_auth = { mode = \"optional\" }",
    ));
    assert!(e.contains("gateway.client_auth.ca_file"), "{e}");
    let e = err(&with(
        "[postgres]\nlisten = \"127.0.0.1:0\"\nclient_auth = { mode = \"sometimes\", ca_file = \"c.pem\" }\n",
    ));
    assert!(
        e.contains("postgres.client_auth.mode") && e.contains("required"),
        "{e}"
    );
    let e = err(&with(
        "[postgres]\nlisten = \"127.0.0.1:0\"\nclient_auth = { mode = \"optional\", ca_file = \"c.pem\", principal_from = [\"email\"] }\n",
    ));
    assert!(e.contains("principal_from"), "{e}");
}

/// `agent_clients` on an issuer: names an agent may have, never the
/// clients people sign in through, which it collects (`people_clients`,
/// `login_client_id`, `[oauth] client_id`).
#[test]
fn agent_clients_are_agent_names_and_not_the_sign_in_clients() {
    use portcullis_identity::oidc::{AgentClient, ClientRoles};
    let base = "[[oidc]]\nissuer = \"https://i\"\naudiences = [\"a\"]\nlogin_client_id = \"cli\"\n";
    let c = parse(&with(&format!(
        "{base}agent_clients = [\"ci-bot\", {{ client = \"kc-bot\", subject = \"5f0c\" }}]\npeople_clients = [\"app\"]\n[oauth]\nclient_id = \"gw\"\n"
    )))
    .unwrap();
    assert_eq!(
        c.oidc[0].settings.clients,
        Some(ClientRoles {
            agents: vec![
                AgentClient {
                    client: "ci-bot".into(),
                    subject: "ci-bot".into()
                },
                AgentClient {
                    client: "kc-bot".into(),
                    subject: "5f0c".into()
                },
            ],
            people: vec!["app".into(), "cli".into(), "gw".into()],
        })
    );
    let plain = parse(&with(base)).unwrap();
    assert_eq!(plain.oidc[0].settings.clients, None);
    for bad in ["claude@alice", "a/b", "", "a b", "a:b"] {
        let e = err(&with(&format!("{base}agent_clients = [\"{bad}\"]\n")));
        assert!(e.contains("oidc[0].agent_clients"), "{bad}: {e}");
    }
    let e = err(&with(&format!(
        "{base}agent_clients = [{{ client = \"x\", subject = \"\" }}]\n"
    )));
    assert!(e.contains("oidc[0].agent_clients"), "{e}");
    // A misspelt key is named, not "did not match any variant".
    let e = err(&with(&format!(
        "{base}agent_clients = [{{ client = \"x\", subjet = \"5f0c\" }}]\n"
    )));
    assert!(e.contains("subjet") && !e.contains("variant"), "{e}");
    let e = err(&with(&format!("{base}agent_clients = [7]\n")));
    assert!(e.contains("a client id"), "{e}");
    for people in ["cli", "app"] {
        let e = err(&with(&format!(
            "{base}agent_clients = [\"{people}\"]\npeople_clients = [\"app\"]\n"
        )));
        assert!(
            e.contains("oidc[0].agent_clients") && e.contains("sign in"),
            "{e}"
        );
    }
    let e = err(&with(&format!(
        "{base}agent_clients = [\"gw\"]\n[oauth]\nclient_id = \"gw\"\n"
    )));
    assert!(
        e.contains("oauth.client_id") && e.contains("agent_clients"),
        "{e}"
    );
    let e = err(&with(&format!("{base}people_clients = [\"app\"]\n")));
    assert!(e.contains("oidc[0].people_clients"), "{e}");
    // Who is a person is part of the naming compared between starts (a
    // change revokes what was minted for people); unset adds nothing.
    let naming = |extra: &str| {
        parse(&with(&format!("{base}{extra}")))
            .unwrap()
            .naming(None)
    };
    let none = naming("");
    let one = naming("agent_clients = [\"ci-bot\"]\n");
    let two = naming("agent_clients = [\"ci-bot\"]\npeople_clients = [\"app\"]\n");
    assert!(
        !none.contains("agents=") && one != two && none != one,
        "{none} {one} {two}"
    );
}

/// `client_auth.namespace`: how another CA's certificates name callers
/// (a review found a partner CA's `deployer` was the internal CA's
/// `agent:deployer`).
#[test]
fn client_auth_namespace_keeps_other_cas_apart() {
    use portcullis_tls::ForeignNames;
    let gw = |extra: &str, rest: &str| {
        MINIMAL.replace(
            "key = \"s.key\"",
            &format!(
                "key = \"s.key\"\nclient_auth = {{ mode = \"optional\", ca_file = \"c.pem\"{extra} }}\n{rest}"
            ),
        )
    };
    let names = |extra: &str| parse(&gw(extra, "")).unwrap().gateway.client_auth.namespace;
    assert_eq!(names(""), ForeignNames::Refused);
    assert_eq!(names(", namespace = \"\""), ForeignNames::Bare);
    assert_eq!(
        names(", namespace = \"partner\""),
        ForeignNames::Namespace("partner".into())
    );
    assert_eq!(
        parse(&gw(", namespace = \"partner\"", ""))
            .unwrap()
            .gateway
            .client_auth
            .cert_policy()
            .foreign,
        ForeignNames::Namespace("partner".into())
    );
    for bad in ["Partner", "a/b", "a:b"] {
        let e = err(&gw(&format!(", namespace = \"{bad}\""), ""));
        assert!(e.contains("gateway.client_auth.namespace"), "{e}");
    }
    // An identity provider's namespace is its people's: a CA may not
    // name them, on either listener.
    let idp =
        "\n[[oidc]]\nissuer = \"https://partner\"\naudiences = [\"a\"]\nnamespace = \"partner\"\n";
    let e = err(&gw(", namespace = \"partner\"", idp));
    assert!(
        e.contains("gateway.client_auth.namespace") && e.contains("https://partner"),
        "{e}"
    );
    let pg = format!(
        "{idp}[postgres]\nlisten = \"127.0.0.1:0\"\nclient_auth = {{ mode = \"optional\", ca_file = \"c.pem\", namespace = \"partner\" }}\n"
    );
    let e = err(&with(&pg));
    assert!(e.contains("postgres.client_auth.namespace"), "{e}");
    // Two listeners may share one.
    let both = "[postgres]\nlisten = \"127.0.0.1:0\"\nclient_auth = { mode = \"optional\", ca_file = \"c.pem\", namespace = \"ca\" }\n";
    assert!(parse(&gw(", namespace = \"ca\"", both)).is_ok());
    // Where another CA may name people, its namespace is part of the
    // naming the store compares (a change revokes tokens minted for
    // people); naming nobody, or only agents, adds nothing.
    let naming = |extra: &str| parse(&gw(extra, "")).unwrap().naming(None);
    let people = ", principal_kinds = [\"user\"]";
    assert_eq!(naming(""), "");
    assert_eq!(naming(people), "");
    assert_eq!(naming(", namespace = \"partner\""), "");
    let bare = naming(&format!("{people}, namespace = \"\""));
    let spaced = naming(&format!("{people}, namespace = \"partner\""));
    assert!(
        !bare.is_empty() && !spaced.is_empty() && bare != spaced,
        "{bare} {spaced}"
    );
}

#[test]
fn mcp_connections() {
    let c = parse(&with(
        r#"
[[connections]]
name = "tools"
type = "mcp"
url = "https://mcp.internal/mcp"
credential = { header = "authorization", prefix = "Bearer ", secret = "env:MCP_TOKEN" }
tools_allow = ["search", "get_*"]
tools_deny = ["get_secret"]
"#,
    ))
    .unwrap();
    let Target::Mcp(t) = &c.connection("tools").unwrap().target else {
        panic!("mcp")
    };
    assert!(t.allows("search") && t.allows("get_user"));
    assert!(!t.allows("get_secret") && !t.allows("delete_user"));
    assert_eq!(c.protocols()["tools"], crate::Protocol::Mcp);

    let e = err(&with(
        "[[connections]]\nname = \"t\"\ntype = \"mcp\"\nurl = \"https://m\"\ntools_allow = [\"a*b\"]\n",
    ));
    assert!(e.contains("connections[0].tools_allow"), "{e}");
    let e = err(&with(
        "[[connections]]\nname = \"t\"\ntype = \"http\"\nurl = \"https://m\"\ntools_deny = [\"x\"]\n",
    ));
    assert!(
        e.contains("connections[0].tools_deny") && e.contains("\"http\""),
        "{e}"
    );
    let e = err(&with(
        "[[connections]]\nname = \"t\"\ntype = \"ftp\"\nurl = \"https://m\"\n",
    ));
    assert!(e.contains("\"mcp\""), "{e}");
}

#[test]
fn agent_served_connections_hold_no_secrets_on_the_gateway() {
    let base =
        format!("{MINIMAL}\n[agent_listener]\nlisten = \"127.0.0.1:8444\"\nca_file = \"ca.pem\"\n");
    let c = parse(&format!(
        "{base}[[connections]]\nname = \"db\"\ntype = \"postgres\"\nagent = \"dc1\"\naccess = \"read-only\"\n"
    ))
    .unwrap();
    let Target::Agent(a) = &c.connection("db").unwrap().target else {
        panic!("agent")
    };
    assert_eq!(
        (a.agent.as_str(), a.protocol, a.access),
        ("dc1", crate::Protocol::Postgres, Access::ReadOnly)
    );
    assert_eq!(c.protocols()["db"], crate::Protocol::Postgres);

    let e = err(&format!(
        "{base}[[connections]]\nname = \"api\"\ntype = \"http\"\nagent = \"dc1\"\ncredential = {{ header = \"x\", secret = \"env:K\" }}\n"
    ));
    assert!(
        e.contains("connections[0].credential") && e.contains("agent"),
        "{e}"
    );
    let e = err(&format!(
        "{base}[[connections]]\nname = \"m\"\ntype = \"mcp\"\nagent = \"dc1\"\n"
    ));
    assert!(e.contains("connections[0].type"), "{e}");
    // No listener for agents: the connection could never be served.
    let e = err(&with(
        "[[connections]]\nname = \"api\"\ntype = \"http\"\nagent = \"dc1\"\n",
    ));
    assert!(e.contains("agent_listener"), "{e}");
}

#[test]
fn agent_config() {
    let path = Path::new("/etc/portcullis-agent/agent.toml");
    let c = AgentConfig::parse(
        r#"
[agent]
gateway = "gw.example.com:8444"
ca_file = "gw-ca.pem"
cert = "agent.pem"
key = "agent.key"

[[connections]]
name = "api"
type = "http"
url = "https://api.internal"
credential = { header = "x-api-key", secret = "file:api-key" }
"#,
        path,
    )
    .unwrap();
    assert_eq!(c.gateways.len(), 1);
    assert_eq!(
        (c.gateways[0].host.as_str(), c.gateways[0].port),
        ("gw.example.com", 8444)
    );
    assert_eq!(c.gateways[0].server_name, "gw.example.com");
    let two = AgentConfig::parse(
        "[agent]\ngateway = [\"gw-a:8444\", \"gw-b:8444\"]\nca_file = \"c\"\ncert = \"c\"\nkey = \"k\"\n",
        path,
    )
    .unwrap();
    assert_eq!(two.gateways[1].to_string(), "gw-b:8444");
    assert_eq!(c.cert, Path::new("/etc/portcullis-agent/agent.pem"));
    assert!(matches!(c.connections[0].target, Target::Http(_)));

    let bad = |text: &str| AgentConfig::parse(text, path).unwrap_err().to_string();
    let head = "[agent]\ngateway = \"gw:8444\"\nca_file = \"c\"\ncert = \"c\"\nkey = \"k\"\n";
    let e = bad("[agent]\ngateway = \"gw\"\nca_file = \"c\"\ncert = \"c\"\nkey = \"k\"\n");
    assert!(
        e.contains("agent.gateway") && e.contains("HOST:PORT"),
        "{e}"
    );
    let e = bad(&format!(
        "{head}[[connections]]\nname = \"x\"\ntype = \"http\"\nurl = \"https://x\"\nagent = \"a\"\n"
    ));
    assert!(e.contains("connections[0].agent"), "{e}");
    let e = bad(&format!("{head}surprise = 1\n"));
    assert!(e.contains("surprise"), "{e}");

    // Enrolment: the gateway's https URL and a token by reference.
    let enrol = |e: &str| format!("{head}enrol = {e}\n");
    let c = AgentConfig::parse(
        &enrol(r#"{ url = "https://gw.example.com:8443/", token = "file:enrol-token" }"#),
        path,
    )
    .unwrap();
    let e = c.enrol.unwrap();
    assert_eq!(e.url, "https://gw.example.com:8443");
    let err = bad(&enrol(r#"{ url = "http://gw:8443", token = "file:t" }"#));
    assert!(err.contains("agent.enrol.url"), "{err}");
    let err = bad(&enrol(
        r#"{ url = "https://gw:8443", token = "pce_inline" }"#,
    ));
    assert!(err.contains("agent.enrol.token"), "{err}");
}

#[test]
fn approval_rules() {
    let c = parse(&with(
        r#"
[[connections]]
name = "prod"
type = "postgres"
url = "postgres://u@db.internal/prod"
password = "env:PW"
approval = { mode = "statements", classes = ["write", "ddl"], approvers = ["dba"], required = 2, wait = "30s" }

[approvals]
webhook = "https://hooks.example.com/portcullis"
webhook_secret = "env:HOOK_SECRET"
webhook_format = "slack"
"#,
    ))
    .unwrap();
    let a = c.connection("prod").unwrap().approval.clone().unwrap();
    assert_eq!(a.mode, ApprovalMode::Statements);
    assert_eq!((a.required, a.wait), (2, Duration::from_secs(30)));
    assert_eq!(a.expires, Duration::from_secs(3600));
    assert!(c.approvals.webhook.as_ref().unwrap().slack);

    let conn = |approval: &str| {
        format!(
            "[[connections]]\nname = \"x\"\ntype = \"http\"\nurl = \"https://x\"\napproval = {approval}\n"
        )
    };
    let e = err(&with(&conn(
        r#"{ mode = "statements", approvers = ["dba"] }"#,
    )));
    assert!(e.contains("connections[0].approval.classes"), "{e}");
    let e = err(&with(&conn(r#"{ mode = "always", approvers = ["dba"] }"#)));
    assert!(e.contains("approval.mode"), "{e}");
    let e = err(&with(&conn(r#"{ mode = "session", approvers = [] }"#)));
    assert!(e.contains("approval.approvers"), "{e}");
    let e = err(&with(&conn(
        r#"{ mode = "statements", classes = ["writes"], approvers = ["a"] }"#,
    )));
    assert!(e.contains("approval.classes"), "{e}");
    let e = err(&with(&conn(
        r#"{ mode = "session", approvers = ["a"], required = 0 }"#,
    )));
    assert!(e.contains("approval.required"), "{e}");
    let e = err(&with("[approvals]\nwebhook = \"https://h\"\n"));
    assert!(e.contains("approvals.webhook_secret"), "{e}");
    // "none" is the same as no rule.
    let c = parse(&with(&conn(r#"{ mode = "none", approvers = ["a"] }"#))).unwrap();
    assert!(c.connection("x").unwrap().approval.is_none());
}

#[test]
fn store_by_url() {
    let c = parse(&with(
        "[store]\nurl = \"postgres://portcullis@db.internal:5432/portcullis?sslrootcert=db-ca.pem\"\npassword = \"env:PORTCULLIS_DB_PASSWORD\"\n",
    ))
    .unwrap();
    let url = c.store.url.clone().unwrap();
    assert!(url.contains("sslmode=verify-full"), "{url}");
    assert!(
        url.contains("sslrootcert=%2Fetc%2Fportcullis%2Fdb-ca.pem")
            || url.contains("/etc/portcullis/db-ca.pem"),
        "{url}"
    );
    let e = err(&with("[store]\nurl = \"postgres://u:hunter2@db/p\"\n"));
    assert!(e.contains("store.url") && !e.contains("hunter2"), "{e}");
    let e = err(&with(
        "[store]\nurl = \"postgres://u@db/p?sslmode=disable\"\n",
    ));
    assert!(e.contains("verify-full"), "{e}");
    let e = err(&with("[store]\nurl = \"mysql://u@db/p\"\n"));
    assert!(e.contains("store.url"), "{e}");
    let e = err(&with("[store]\npassword = \"env:X\"\n"));
    assert!(e.contains("store.password"), "{e}");
    let c = parse(&with("[store]\nurl = \"sqlite://state/p.db\"\n")).unwrap();
    assert_eq!(c.store.path, Path::new("/etc/portcullis/state/p.db"));
    assert!(
        c.store
            .open_url()
            .unwrap()
            .starts_with("sqlite:///etc/portcullis/state/p.db")
    );
}

#[test]
fn the_deployment_examples_parse() {
    let gw = include_str!("../../../deploy/gateway.toml");
    let c = parse(gw).unwrap();
    assert!(c.store.url.as_deref().unwrap().starts_with("postgres://"));
    assert!(c.recordings.s3.is_some());
    assert!(c.agent_listener.is_some());
    let agent = include_str!("../../../deploy/agent.toml");
    let a = AgentConfig::parse(agent, Path::new("/etc/portcullis/agent.toml")).unwrap();
    assert_eq!(a.gateways.len(), 2);
    // And the examples in the repository's root.
    let example = include_str!("../../../agent.example.toml");
    AgentConfig::parse(example, Path::new("/etc/portcullis/agent.toml")).unwrap();
}

#[test]
fn recordings_by_url() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.recordings.s3.is_none());
    assert_eq!(c.recordings.spool, Path::new("/etc/portcullis/recordings"));
    let e = err(&with(
        "[recordings]\nurl = \"s3://b/p\"\nendpoint = \"http://minio:9000\"\n",
    ));
    assert!(e.contains("allow_http"), "{e}");
    let e = err(&with("[recordings]\nendpoint = \"https://x\"\n"));
    assert!(
        e.contains("recordings.endpoint") && e.contains("s3://"),
        "{e}"
    );
    let e = err(&with("[recordings]\nurl = \"ftp://x\"\n"));
    assert!(e.contains("recordings.url"), "{e}");
    let c = parse(&with(
        "[recordings]\nurl = \"s3://bucket/some/prefix/\"\nmax_backlog = \"1m\"\n",
    ))
    .unwrap();
    let s3 = c.recordings.s3.unwrap();
    assert_eq!(
        (s3.bucket.as_str(), s3.prefix.as_str()),
        ("bucket", "some/prefix")
    );
    assert_eq!(c.recordings.max_backlog, Duration::from_secs(60));
}

#[test]
fn a_syntax_error_says_where_without_quoting_the_file() {
    let text = "[gateway]\nlisten = \"127.0.0.1:0\"\ncert = \"c\"\nkey = \"k\"\napi_key = \"CANARY-hunter2\n";
    let e = Config::parse(text, Path::new("/x/portcullis.toml")).unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains("line 5"), "{shown}");
    assert!(!shown.contains("CANARY"), "{shown}");
}

#[test]
fn a_value_in_the_wrong_place_is_not_quoted_back() {
    // A secret pasted where a table belongs: serde would quote it.
    let text = "[gateway]\nlisten = \"127.0.0.1:0\"\ncert = \"c\"\nkey = \"k\"\n\n[[connections]]\nname = \"a\"\ntype = \"http\"\nurl = \"https://x\"\ncredential = \"Bearer CANARY-sk-live\"\n";
    let e = Config::parse(text, Path::new("/x/portcullis.toml")).unwrap_err();
    let shown = e.to_string();
    assert!(!shown.contains("CANARY"), "{shown}");
    assert!(
        shown.contains("credential") || shown.contains("line"),
        "{shown}"
    );
    let n = "[gateway]\nlisten = \"127.0.0.1:0\"\ncert = \"c\"\nkey = \"k\"\n\n[limits]\nmax_connections = \"CANARY-2\"\n";
    let shown = Config::parse(n, Path::new("/x/portcullis.toml"))
        .unwrap_err()
        .to_string();
    assert!(!shown.contains("CANARY"), "{shown}");
}

#[test]
fn oauth_needs_an_issuer_and_bounded_lifetimes() {
    let oidc = "[[oidc]]\nissuer = \"https://idp.example.com\"\naudiences = [\"gw\"]\n";
    let e = err(&with("[oauth]\nclient_id = \"gw\"\n"));
    assert!(e.contains("oauth") && e.contains("[[oidc]]"), "{e}");
    let c = parse(&with(&format!("{oidc}[oauth]\nclient_id = \"gw\"\n"))).unwrap();
    let o = c.oauth.unwrap();
    assert_eq!(o.issuer, "https://idp.example.com");
    assert_eq!(o.access_token_ttl, Duration::from_secs(600));
    assert_eq!(o.refresh_token_ttl, Duration::from_secs(24 * 3600));
    assert!(
        o.redirect_uris
            .iter()
            .any(|p| p.allows("http://127.0.0.1:5555/cb"))
    );
    for (extra, key) in [
        ("access_token_ttl = \"2h\"", "oauth.access_token_ttl"),
        ("refresh_token_ttl = \"30d\"", "oauth.refresh_token_ttl"),
        (
            "redirect_uris = [\"http://example.com/*\"]",
            "oauth.redirect_uris",
        ),
        ("issuer = \"https://other.example.com\"", "oauth.issuer"),
        ("client_secret = \"inline-secret\"", "oauth.client_secret"),
    ] {
        let e = err(&with(&format!(
            "{oidc}[oauth]\nclient_id = \"gw\"\n{extra}\n"
        )));
        assert!(e.contains(key), "{extra}: {e}");
        assert!(
            !e.contains("inline-secret"),
            "the error echoes a secret: {e}"
        );
    }
}

#[test]
fn the_metrics_token_is_a_secret_reference_never_inline() {
    assert_eq!(parse(MINIMAL).unwrap().gateway.metrics_token, None);
    let c = parse(&MINIMAL.replace(
        "key = \"s.key\"",
        "key = \"s.key\"\nmetrics_token = \"file:m\"",
    ))
    .unwrap();
    assert_eq!(
        c.gateway.metrics_token,
        Some(SecretRef::File("/etc/portcullis/m".into()))
    );
    let e = err(&MINIMAL.replace(
        "key = \"s.key\"",
        "key = \"s.key\"\nmetrics_token = \"hunter2\"",
    ));
    assert!(
        e.contains("gateway.metrics_token") && !e.contains("hunter2"),
        "{e}"
    );
}
