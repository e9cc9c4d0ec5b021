//! Console sign-in through a real SAML identity provider (pysaml2's IdP,
//! `tests/python/saml_idp.py`, signing with xmlsec1), against the real
//! binary built with `--features saml`: curl plays the browser for the
//! hostile answers (unsigned, another key, another audience, expired,
//! replayed, signature-wrapped, answered in another browser, with a DTD),
//! and headless Chromium signs a person in through the provider's page.
//!
//! Says SKIPPED without the feature, without xmlsec1, or where pysaml2
//! cannot be installed (`.ci/run` installs all three).

mod common;

#[cfg(feature = "saml")]
mod saml {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;

    use super::common::*;
    use portcullis_tls::CertificateAuthority;
    use serde_json::Value;

    fn python_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python")
    }

    /// pysaml2 in `tests/python/.saml` (installed there on first use, apart
    /// from the system's packages), or why it cannot run.
    fn pysaml2() -> Result<PathBuf, String> {
        static DONE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        DONE.get_or_init(|| {
            if !Path::new("/usr/bin/xmlsec1").exists() {
                return Err("xmlsec1 is not installed (apt-get install xmlsec1)".into());
            }
            let target = python_dir().join(".saml");
            if !target.join("saml2").exists() {
                let st = Command::new("python3")
                    .args(["-m", "pip", "install", "-q", "--target"])
                    .arg(&target)
                    .arg("-r")
                    .arg(python_dir().join("saml-requirements.txt"))
                    .status();
                if !matches!(st, Ok(s) if s.success()) {
                    return Err("pysaml2 could not be installed".into());
                }
            }
            Ok(target)
        })
        .clone()
    }

    struct Idp {
        child: Child,
        dir: PathBuf,
    }

    impl Drop for Idp {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Idp {
        fn start(dir: &Path, lib: &Path) -> Idp {
            let dir = dir.join("saml-idp");
            std::fs::create_dir_all(&dir).unwrap();
            let mut child = Command::new("python3")
                .arg("-W")
                .arg("ignore")
                .arg(python_dir().join("saml_idp.py"))
                .arg("--dir")
                .arg(&dir)
                .args(["--user", "alice=admins,approvers", "--user", "bob=dev"])
                .env("PYTHONPATH", lib)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(dir.join("idp.log")).unwrap())
                .spawn()
                .expect("python3 runs the SAML IdP");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.starts_with("saml-idp: ready") {
                        let _ = tx.send(());
                    }
                }
            });
            let idp = Idp { child, dir };
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!(
                        "the SAML IdP did not start: {}",
                        std::fs::read_to_string(idp.dir.join("idp.log")).unwrap_or_default()
                    )
                });
            idp
        }
    }

    struct Setup {
        tmp: tempfile::TempDir,
        gw: Proc,
        _idp: Idp,
    }

    fn setup() -> Option<Setup> {
        let lib = match pysaml2() {
            Ok(l) => l,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return None;
            }
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let idp = Idp::start(dir, &lib);
        let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
        write_leaf(&ca, dir, "server");
        let config = r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

[saml]
idp_metadata = "saml-idp/idp-metadata.xml"
"#;
        let (gw, _) = gateway_with_config(dir, config);
        let s = Setup { tmp, gw, _idp: idp };
        // The provider learns about us from our metadata.
        let md = s.get(None, "/saml/metadata");
        assert_eq!(md.status, 200, "{}", md.body);
        assert!(md.body.contains("/saml/acs"), "{}", md.body);
        std::fs::write(s.tmp.path().join("saml-idp/sp-metadata.xml"), &md.body).unwrap();
        Some(s)
    }

    /// What came back from posting an answer.
    struct Posted {
        status: u16,
        headers: String,
        body: String,
    }

    impl Setup {
        fn ca(&self) -> String {
            self.tmp.path().join("ca.pem").display().to_string()
        }

        fn jar(&self, name: &str) -> String {
            self.tmp.path().join(name).display().to_string()
        }

        fn get(&self, jar: Option<&str>, path: &str) -> Reply {
            let url = format!("{}{path}", self.gw.url);
            let ca = self.ca();
            let mut args = vec!["--cacert", ca.as_str()];
            if let Some(j) = jar {
                args.extend(["-b", j, "-c", j]);
            }
            args.push(&url);
            curl(&args)
        }

        /// Start a sign-in in browser `jar`: the provider's URL.
        fn begin(&self, jar: &str) -> String {
            let url = format!("{}/ui/login/saml", self.gw.url);
            let out = Command::new("curl")
                .args(["-sS", "--cacert", &self.ca(), "-c", jar, "-b", jar])
                .args([
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{redirect_url}",
                    &url,
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (code, location) = text.split_once(' ').unwrap();
            assert_eq!(code, "303", "{text}");
            assert!(location.contains("SAMLRequest="), "{location}");
            location.to_owned()
        }

        /// The provider's answer for `user` (made hostile by `variant`):
        /// where it posts, and the `SAMLResponse`.
        fn answer(&self, location: &str, user: &str, variant: &str) -> (String, String) {
            let r = curl(&[&format!("{location}&user={user}&variant={variant}")]);
            assert_eq!(r.status, 200, "{}", r.body);
            let attr = |name: &str| {
                let at = r.body.find(name).unwrap_or_else(|| panic!("{}", r.body));
                let rest = &r.body[at..];
                let v = &rest[rest.find("value=\"").map(|i| i + 7).unwrap_or(0)..];
                v[..v.find('"').unwrap()].to_owned()
            };
            let acs = {
                let at = r.body.find("action=\"").unwrap() + 8;
                r.body[at..at + r.body[at..].find('"').unwrap()].to_owned()
            };
            (acs, attr("name=\"SAMLResponse\""))
        }

        fn post(&self, jar: Option<&str>, acs: &str, response: &str) -> Posted {
            let ca = self.ca();
            let form = format!("SAMLResponse={response}");
            let mut args = vec!["-sS", "--cacert", ca.as_str(), "-D", "-"];
            if let Some(j) = jar {
                args.extend(["-b", j, "-c", j]);
            }
            args.extend(["--data-urlencode", form.as_str(), acs]);
            let out = Command::new("curl").args(&args).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let status = headers
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            Posted {
                status,
                headers: headers.to_owned(),
                body: body.to_owned(),
            }
        }

        /// A whole sign-in in a fresh browser: what the ACS answered and
        /// `/api/v1/me` afterwards.
        fn sign_in(&self, user: &str, variant: &str) -> (Posted, Reply) {
            let jar = self.jar(&format!("jar-{user}-{variant}"));
            let location = self.begin(&jar);
            let (acs, resp) = self.answer(&location, user, variant);
            let posted = self.post(Some(&jar), &acs, &resp);
            (posted, self.get(Some(&jar), "/api/v1/me"))
        }

        fn audit(&self) -> Vec<Value> {
            json_lines(&cli_at(
                &self.tmp.path().join("portcullis.toml"),
                &["audit", "export"],
            ))
        }
    }

    fn refused(p: &Posted, what: &str) {
        assert!(
            p.status == 403 || p.status == 400,
            "{what}: {} {}",
            p.status,
            p.body
        );
        assert!(
            !p.headers.contains("__Host-portcullis-console="),
            "{what} set a console cookie: {}",
            p.headers
        );
    }

    #[test]
    fn forged_and_replayed_saml_answers_sign_nobody_in() {
        let Some(s) = setup() else { return };

        // The real thing: alice, with her groups, is an admin.
        let (ok, me) = s.sign_in("alice", "ok");
        assert_eq!(ok.status, 303, "{}", ok.body);
        assert!(ok.headers.contains("__Host-portcullis-console="));
        assert!(ok.headers.to_lowercase().contains("samesite=strict"));
        let me = me.json();
        assert_eq!(me["principal"], "user:alice");
        assert_eq!(me["groups"], serde_json::json!(["admins", "approvers"]));
        assert_eq!(me["admin"], true);

        // Hostile answers, each in its own browser with its own started
        // sign-in.
        for (variant, why) in [
            ("unsigned", "must be signed"),
            ("other-key", "must be signed"),
            ("wrong-audience", "AudienceRequirement"),
            ("expired", "expired"),
        ] {
            let (p, me) = s.sign_in("bob", variant);
            refused(&p, variant);
            assert!(p.body.contains(why), "{variant}: {}", p.body);
            assert_eq!(me.status, 401, "{variant}");
        }

        // Signature wrapping: an unsigned assertion for mallory (admins)
        // in front of bob's signed one. Whatever samael does with it, only
        // what the signature covers may count.
        let (p, me) = s.sign_in("bob", "wrapped");
        if p.status == 303 {
            let me = me.json();
            assert_eq!(me["principal"], "user:bob", "{me}");
            assert_eq!(me["groups"], serde_json::json!(["dev"]), "{me}");
        } else {
            refused(&p, "wrapped");
        }

        // A comment put inside the signed name (canonical XML drops it, so
        // the signature may still hold): `alice.evil` must never read as
        // `alice`.
        let (p, me) = s.sign_in("alice.evil", "comment");
        if p.status == 303 {
            assert_eq!(me.json()["principal"], "user:alice.evil");
        } else {
            refused(&p, "comment in the name");
        }

        // Replay: a good answer, captured, presented again…
        let jar = s.jar("jar-replay");
        let location = s.begin(&jar);
        let (acs, resp) = s.answer(&location, "bob", "ok");
        assert_eq!(s.post(Some(&jar), &acs, &resp).status, 303);
        // …by the same browser (its started sign-in is spent),
        let again = s.post(Some(&jar), &acs, &resp);
        refused(&again, "replayed in the same browser");
        assert!(
            again.body.contains("no sign-in was started"),
            "{}",
            again.body
        );
        // …by a browser that started its own sign-in (login CSRF: the
        // answer is for another request),
        let other = s.jar("jar-other");
        s.begin(&other);
        let p = s.post(Some(&other), &acs, &resp);
        refused(&p, "answer for another browser's request");
        assert!(p.body.contains("InResponseTo"), "{}", p.body);
        // …and with no browser binding at all.
        refused(&s.post(None, &acs, &resp), "no binding cookie");

        // Not SAML at all: a DTD (entity expansion), not base64, twice.
        let jar = s.jar("jar-dtd");
        s.begin(&jar);
        let dtd = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\">]><r>&a;</r>",
        );
        let p = s.post(Some(&jar), &acs, &dtd);
        assert_eq!(p.status, 400, "{}", p.body);
        assert!(p.body.contains("DTD"), "{}", p.body);

        // A made-up signature that points outside the answer: libxmlsec1
        // would fetch the URL (or open the file, or run the XPath) before
        // finding the signature bad. Refused unread; nothing is fetched.
        let ssrf = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        ssrf.set_nonblocking(true).unwrap();
        let port = ssrf.local_addr().unwrap().port();
        let forged = |reference: &str, transforms: &str| {
            let doc = format!(
                r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="r1" Version="2.0" IssueInstant="2026-01-01T00:00:00Z"><ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/><ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/><ds:Reference URI="{reference}">{transforms}<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><ds:DigestValue>AAAA</ds:DigestValue></ds:Reference></ds:SignedInfo><ds:SignatureValue>AAAA</ds:SignatureValue></ds:Signature><x ID="t">hello</x></samlp:Response>"#
            );
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, doc)
        };
        let xpath = r#"<ds:Transforms><ds:Transform Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116"><ds:XPath>count(//. | //@* | //namespace::*) &gt; 0</ds:XPath></ds:Transform></ds:Transforms>"#;
        for (reference, transforms) in [
            (format!("http://127.0.0.1:{port}/ssrf"), ""),
            ("file:///dev/zero".to_owned(), ""),
            ("#t".to_owned(), xpath),
        ] {
            let jar = s.jar("jar-ssrf");
            s.begin(&jar);
            let p = s.post(Some(&jar), &acs, &forged(&reference, transforms));
            assert_eq!(p.status, 400, "{reference}: {}", p.body);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(ssrf.accept().is_err(), "the gateway fetched a reference");
        // Another encoding can spell a DTD the check would not see.
        let utf7 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            r#"<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE r+AD4-<r/>"#,
        );
        let jar = s.jar("jar-utf7");
        s.begin(&jar);
        let p = s.post(Some(&jar), &acs, &utf7);
        assert_eq!(p.status, 400, "{}", p.body);

        // Every refusal is in the audit log, and only alice and bob (the
        // replayed answer's first use, the wrapped one's signed person)
        // ever signed in.
        let audit = s.audit();
        let refusals = audit
            .iter()
            .filter(|e| e["event"]["action"] == "console_sign_in_refused")
            .count();
        assert!(refusals >= 8, "{refusals} refusals audited");
        let signed_in: Vec<&str> = audit
            .iter()
            .filter(|e| e["event"]["action"] == "console_signed_in")
            .filter_map(|e| e["event"]["detail"]["principal"].as_str())
            .collect();
        assert!(
            signed_in
                .iter()
                .all(|p| *p == "user:alice" || *p == "user:bob"),
            "{signed_in:?}"
        );
        assert!(!s.gw.logs().contains("mallory\" token_id"));
    }

    #[test]
    fn a_person_signs_in_to_the_console_through_the_saml_provider_page() {
        if chromium().is_none() {
            eprintln!("SKIPPED: Chromium is not installed (apt-get install chromium)");
            return;
        }
        let Some(s) = setup() else { return };
        super::common::idp::ensure_packages();
        let out = Command::new("node")
            .arg(super::common::idp::harness_dir().join("console.mjs"))
            .arg(&s.gw.url)
            .args(["signin-saml", "alice", "me", "signout"])
            .env("SPKI", spki(&s.tmp.path().join("server.pem")))
            .output()
            .expect("node runs Playwright");
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            lines.iter().all(|l| l.get("error").is_none()),
            "{lines:?}\n{err}"
        );
        let step = |name: &str| {
            lines
                .iter()
                .find(|l| l["step"] == name)
                .unwrap_or_else(|| panic!("no {name} in {lines:?}\n{err}"))
        };
        assert_eq!(step("signin-saml")["principal"], "user:alice (admin)");
        assert_eq!(step("signin-saml")["buttons"], serde_json::json!(["saml"]));
        assert_eq!(step("me")["status"], 200);
        assert_eq!(step("signout")["status"], 401);
    }
}

#[cfg(not(feature = "saml"))]
#[test]
fn saml_sign_in() {
    eprintln!(
        "SKIPPED: built without the `saml` feature (cargo test --workspace --features portcullis/saml)"
    );
}
