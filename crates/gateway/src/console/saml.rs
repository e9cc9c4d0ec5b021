//! Console sign-in through a SAML 2.0 identity provider: the gateway is a
//! service provider (HTTP-Redirect binding for the request, HTTP-POST for
//! the response).
//!
//! The response's signature is checked by samael over libxmlsec1, never by
//! hand (signature wrapping is the classic way to get that wrong), and only
//! against the certificates in the provider's metadata file; samael reads
//! only what the signature covers. On top of samael's checks the gateway
//! requires what samael leaves optional or does not know:
//! - the response answers the request *this browser* started (a one-time
//!   secret in a cookie, spent before the response is read);
//! - an audience restriction naming this gateway (samael checks one only
//!   when present);
//! - only SHA-2 signature algorithms;
//! - no DTD (SAML forbids them; they are how XML parsers are attacked),
//!   UTF-8 only (another declared encoding can spell a DTD this check
//!   would not see);
//! - signatures shaped as SAML's profile makes them (see [`check_shape`]):
//!   libxmlsec1, as samael drives it, would otherwise follow any reference
//!   (a URL, a local file) and run any transform (XPath, XSLT) named in an
//!   unsigned `Signature` before it finds the signature bad;
//! - an assertion that never signed anyone in before, on any gateway of
//!   the store (its ID is kept until it expires).

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_audit::{AuditEvent, AuditLog};
use portcullis_config::saml::Saml;
use portcullis_http::{Body, full};
use portcullis_identity::{AuthMethod, Principal, PrincipalKind, unix_now};
use portcullis_store::{GrantKind, OAuthGrantRow, Spent, Store};
use samael::crypto::AllowedSignatureAlgorithm;
use samael::metadata::{EntityDescriptor, HTTP_REDIRECT_BINDING};
use samael::schema::Assertion;
use samael::service_provider::{ServiceProvider, ServiceProviderBuilder};
use samael::traits::ToXml;

use super::{ACS_PATH, Console, METADATA_PATH, SLO_PATH};
use crate::oauth::{PerPeer, escape, hash, page};

/// The cookie binding a started sign-in to its browser. The provider's
/// answer is a cross-site POST, which carries only `SameSite=None`
/// cookies; it holds a one-time secret worth nothing once spent.
const COOKIE: &str = "__Host-portcullis-saml";
/// How long a started sign-in waits for the provider's answer.
const PENDING_SECS: i64 = 600;
/// The largest `SAMLResponse` form read.
const MAX_FORM: usize = 256 * 1024;
/// Sign-ins started, and answers posted, per address per window.
const PER_PEER: u32 = 60;
/// Group values kept at most (and their length).
const MAX_GROUPS: usize = 256;
const MAX_GROUP_LEN: usize = 256;

/// Why an answer from the provider signed nobody in.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no sign-in was started in this browser, or it expired or was already answered; start again"
    )]
    NotStarted,
    #[error("the answer is not a SAML response: {0}")]
    Malformed(&'static str),
    #[error("the SAML response was refused: {0}")]
    Invalid(String),
    #[error("the assertion names no audience; it must be restricted to this gateway")]
    NoAudience,
    #[error("this assertion has already signed someone in")]
    Replayed,
    #[error("the assertion names no usable person: {0}")]
    BadPerson(String),
    #[error("the store is unavailable")]
    Store,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::Store => StatusCode::SERVICE_UNAVAILABLE,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// The gateway as a SAML service provider.
pub struct SamlSp {
    sp: Arc<ServiceProvider>,
    /// Where the provider takes requests (HTTP-Redirect binding).
    sso_url: String,
    /// Our entity ID: the audience an assertion must name.
    entity_id: String,
    cfg: Saml,
    store: Store,
    audit: AuditLog,
    sign_ins: PerPeer,
    answers: PerPeer,
}

impl SamlSp {
    pub fn new(
        cfg: &Saml,
        public_url: &str,
        store: Store,
        audit: AuditLog,
    ) -> Result<Self, String> {
        let base = public_url.trim_end_matches('/');
        let path = cfg.idp_metadata.display();
        let xml = std::fs::read_to_string(&cfg.idp_metadata)
            .map_err(|e| format!("saml.idp_metadata {path}: {e}"))?;
        if has_dtd(&xml) {
            return Err(format!("saml.idp_metadata {path}: a DTD is not allowed"));
        }
        let idp: EntityDescriptor = xml
            .parse()
            .map_err(|e| format!("saml.idp_metadata {path}: {e}"))?;
        let entity_id = cfg
            .entity_id
            .clone()
            .unwrap_or_else(|| format!("{base}{METADATA_PATH}"));
        let sp = ServiceProviderBuilder::default()
            .entity_id(Some(entity_id.clone()))
            .metadata_url(Some(format!("{base}{METADATA_PATH}")))
            .acs_url(Some(format!("{base}{ACS_PATH}")))
            // No single logout: signing out of the console revokes its
            // session; the provider's session is the provider's.
            .slo_url(Some(format!("{base}{SLO_PATH}")))
            .idp_metadata(idp)
            .allow_idp_initiated(false)
            .max_clock_skew(chrono::Duration::seconds(cfg.clock_skew.as_secs() as i64))
            .allowed_signature_algorithms(Some(vec![
                AllowedSignatureAlgorithm::RsaSha256,
                AllowedSignatureAlgorithm::RsaSha384,
                AllowedSignatureAlgorithm::RsaSha512,
                AllowedSignatureAlgorithm::EcdsaSha256,
                AllowedSignatureAlgorithm::EcdsaSha384,
                AllowedSignatureAlgorithm::EcdsaSha512,
            ]))
            .build()
            .map_err(|e| format!("saml: {e}"))?;
        // Without a certificate samael would accept an unsigned response.
        match sp.idp_signing_certs() {
            Ok(Some(certs)) if !certs.is_empty() => {}
            Ok(_) => {
                return Err(format!(
                    "saml.idp_metadata {path}: names no signing certificate"
                ));
            }
            Err(e) => return Err(format!("saml.idp_metadata {path}: {e}")),
        }
        let sso_url = sp
            .sso_binding_location(HTTP_REDIRECT_BINDING)
            .ok_or_else(|| {
                format!("saml.idp_metadata {path}: no single sign-on service with the HTTP-Redirect binding")
            })?;
        if !sso_url.starts_with("https://") && !is_loopback_http(&sso_url) {
            return Err(format!(
                "saml.idp_metadata {path}: the sign-on URL must be https (http only on loopback)"
            ));
        }
        Ok(Self {
            sp: Arc::new(sp),
            sso_url,
            entity_id,
            cfg: cfg.clone(),
            store,
            audit,
            sign_ins: PerPeer::new(PER_PEER),
            answers: PerPeer::new(PER_PEER),
        })
    }

    /// `GET /saml/metadata`: what the provider needs to know about us.
    pub fn metadata(&self) -> Response<Body> {
        let xml = self
            .sp
            .metadata()
            .map_err(|e| e.to_string())
            .and_then(|m| m.to_string().map_err(|e| format!("{e:?}")));
        match xml {
            Ok(xml) => {
                let mut resp = Response::new(full(bytes::Bytes::from(xml)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/samlmetadata+xml"),
                );
                resp
            }
            Err(e) => {
                tracing::error!(error = %e, "SAML metadata could not be written");
                page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Metadata unavailable",
                    "",
                )
            }
        }
    }

    /// `GET /ui/login/saml`: send the browser to the provider with a
    /// request whose ID only this browser can answer for.
    pub async fn sign_in(&self, peer: IpAddr) -> Response<Body> {
        if !self.sign_ins.allow(peer, unix_now()) {
            return page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many sign-ins",
                "Too many sign-ins were started from this network, or from all of them; try again in a few minutes.",
            );
        }
        match self.start().await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::error!(error = %e, "SAML sign-in could not start");
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in unavailable",
                    "The store cannot be reached; try again shortly.",
                )
            }
        }
    }

    async fn start(&self) -> Result<Response<Body>, String> {
        let mut request = self
            .sp
            .make_authentication_request(&self.sso_url)
            .map_err(|e| e.to_string())?;
        // samael's IDs carry 32 random bits; the binding cookie carries
        // the secret, and the ID is 128 bits so no two sign-ins share one.
        let (id_secret, _) = crate::oauth::secret().map_err(|e| e.to_string())?;
        request.id = format!("id-{}", &id_secret[..22]);
        let xml = request.to_string().map_err(|e| format!("{e:?}"))?;
        let (secret, h) = crate::oauth::secret().map_err(|e| e.to_string())?;
        let now = unix_now();
        self.store
            .insert_oauth_grant(&OAuthGrantRow {
                hash: h,
                kind: GrantKind::SamlRequest,
                client_id: "saml".into(),
                family: String::new(),
                data: request.id.clone(),
                created_at: now,
                expires_at: now + PENDING_SECS,
            })
            .await
            .map_err(|e| e.to_string())?;
        let sep = if self.sso_url.contains('?') { '&' } else { '?' };
        let location = format!(
            "{}{sep}SAMLRequest={}",
            self.sso_url,
            form_urlencoded::byte_serialize(deflate(&xml)?.as_bytes()).collect::<String>()
        );
        let mut resp = Response::new(full(bytes::Bytes::new()));
        *resp.status_mut() = StatusCode::SEE_OTHER;
        let h = resp.headers_mut();
        h.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).map_err(|e| e.to_string())?,
        );
        let cookie = format!(
            "{COOKIE}={secret}; Max-Age={PENDING_SECS}; Path=/; Secure; HttpOnly; SameSite=None"
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).map_err(|e| e.to_string())?,
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }

    /// `POST /saml/acs`: the provider's answer, brought by the browser.
    pub async fn acs(
        &self,
        req: Request<Incoming>,
        console: &Console,
        peer: IpAddr,
    ) -> Response<Body> {
        if !self.answers.allow(peer, unix_now()) {
            portcullis_http::linger(req.into_body()).await;
            return page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many sign-ins",
                "Too many sign-in answers came from this network, or from all of them; try again in a few minutes.",
            );
        }
        let cookie = portcullis_http::headers::cookie(req.headers(), COOKIE).map(str::to_owned);
        let result = self.person(req, cookie.as_deref()).await;
        let mut resp = match result {
            Ok(person) => console.signed_in(&person, "saml").await,
            Err(refusal) => {
                self.refused(&refusal, peer).await;
                page(
                    refusal.status(),
                    "Sign-in refused",
                    &format!("<p>{}</p>", escape(&refusal.to_string())),
                )
            }
        };
        // The binding secret is spent either way.
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=None"
        )) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp
    }

    /// The person a provider's answer signs in, after every check.
    async fn person(
        &self,
        req: Request<Incoming>,
        cookie: Option<&str>,
    ) -> Result<Principal, Refusal> {
        // The started sign-in is spent before the answer is read: one
        // answer per request, whatever it says.
        let request_id = match cookie {
            None => {
                portcullis_http::linger(req.into_body()).await;
                return Err(Refusal::NotStarted);
            }
            Some(secret) => {
                match self
                    .store
                    .spend_oauth_grant(&hash(secret), GrantKind::SamlRequest, unix_now())
                    .await
                {
                    Ok(Spent::Fresh { data, .. }) => data,
                    Ok(_) => {
                        portcullis_http::linger(req.into_body()).await;
                        return Err(Refusal::NotStarted);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SAML sign-in lookup failed");
                        return Err(Refusal::Store);
                    }
                }
            }
        };
        let encoded = saml_response(req).await?;
        let sp = self.sp.clone();
        // libxmlsec work: off the async workers.
        let assertion = tokio::task::spawn_blocking(move || {
            let bytes = STANDARD
                .decode(encoded.trim())
                .map_err(|_| Refusal::Malformed("SAMLResponse is not base64"))?;
            let xml = String::from_utf8(bytes).map_err(|_| Refusal::Malformed("not UTF-8 XML"))?;
            if has_dtd(&xml) {
                return Err(Refusal::Malformed("a DTD is not allowed"));
            }
            check_shape(&xml).map_err(Refusal::Malformed)?;
            sp.parse_xml_response(&xml, Some(&[request_id.as_str()]))
                .map_err(|e| Refusal::Invalid(bounded(&e.to_string())))
        })
        .await
        .map_err(|_| Refusal::Invalid("the response could not be checked".into()))??;
        let person = self.principal(&assertion)?;
        self.first_use(&assertion).await?;
        Ok(person)
    }

    /// Who the checked assertion names, with the gateway's own rules.
    fn principal(&self, a: &Assertion) -> Result<Principal, Refusal> {
        check_audience(a, &self.entity_id)?;
        person_of(
            a,
            self.cfg.name_attribute.as_deref(),
            &self.cfg.groups_attribute,
            &self.cfg.namespace,
        )
    }

    /// Keep the assertion's ID until it expires; refuse it if kept before.
    async fn first_use(&self, a: &Assertion) -> Result<(), Refusal> {
        let now = unix_now();
        let until = expiry(a).unwrap_or(now + PENDING_SECS) + self.cfg.clock_skew.as_secs() as i64;
        let key = format!(
            "saml-assertion:{}:{}",
            a.issuer.value.as_deref().unwrap_or(""),
            a.id
        );
        let kept = self
            .store
            .insert_oauth_grant_once(&OAuthGrantRow {
                hash: hash(&key),
                kind: GrantKind::SamlAssertion,
                client_id: "saml".into(),
                family: String::new(),
                data: String::new(),
                created_at: now,
                expires_at: until.max(now + 60),
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "SAML replay record failed");
                Refusal::Store
            })?;
        if kept { Ok(()) } else { Err(Refusal::Replayed) }
    }

    /// A refusal is evidence: logged and audited.
    async fn refused(&self, r: &Refusal, peer: IpAddr) {
        tracing::warn!(reason = %r, %peer, "SAML sign-in refused");
        if let Err(e) = self
            .audit
            .append(&AuditEvent::Admin {
                action: "console_sign_in_refused".into(),
                detail: serde_json::json!({
                    "via": "saml",
                    "reason": r.to_string(),
                    "peer": peer.to_string(),
                }),
            })
            .await
        {
            tracing::error!(error = %e, "a refused SAML sign-in could not be audited");
        }
    }
}

/// The `SAMLResponse` field of a bounded form body.
async fn saml_response(req: Request<Incoming>) -> Result<String, Refusal> {
    let is_form = crate::oauth::is_form(req.headers());
    let body = http_body_util::Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|_| Refusal::Malformed("the form is larger than 256 KiB"))?
        .to_bytes();
    if !is_form {
        return Err(Refusal::Malformed("expected a form post"));
    }
    let mut found = form_urlencoded::parse(&body).filter(|(k, _)| k == "SAMLResponse");
    match (found.next(), found.next()) {
        (Some((_, v)), None) => Ok(v.into_owned()),
        (None, _) => Err(Refusal::Malformed("SAMLResponse is missing")),
        (Some(_), Some(_)) => Err(Refusal::Malformed("SAMLResponse is sent twice")),
    }
}

/// The assertion must be restricted to our entity ID (samael checks the
/// restriction only when there is one).
fn check_audience(a: &Assertion, entity_id: &str) -> Result<(), Refusal> {
    let restrictions = a
        .conditions
        .as_ref()
        .and_then(|c| c.audience_restrictions.as_ref())
        .filter(|r| !r.is_empty())
        .ok_or(Refusal::NoAudience)?;
    // Every restriction must be met (SAML core §2.5.1.4).
    if restrictions
        .iter()
        .all(|r| r.audience.iter().any(|x| x == entity_id))
    {
        Ok(())
    } else {
        Err(Refusal::Invalid(format!(
            "the assertion is not for this gateway ({entity_id})"
        )))
    }
}

/// `user:NAME` and groups from a checked assertion.
fn person_of(
    a: &Assertion,
    name_attribute: Option<&str>,
    groups_attribute: &str,
    namespace: &portcullis_identity::Namespace,
) -> Result<Principal, Refusal> {
    let name = match name_attribute {
        Some(attr) => attribute_values(a, attr).into_iter().next(),
        None => a
            .subject
            .as_ref()
            .and_then(|s| s.name_id.as_ref())
            .map(|n| n.value.clone()),
    }
    .filter(|n| !n.is_empty())
    .ok_or_else(|| {
        Refusal::BadPerson(match name_attribute {
            Some(attr) => format!("no {attr} attribute"),
            None => "no NameID".into(),
        })
    })?;
    if name.trim() != name {
        return Err(Refusal::BadPerson(
            "the name has surrounding white space".into(),
        ));
    }
    // The name as the provider gives it must be a whole principal on its
    // own (no `/`), before any namespace is put in front of it.
    portcullis_identity::validate_subject(&format!("user:{name}"))
        .map_err(|_| Refusal::BadPerson(bounded(&format!("{name:?} is not a usable name"))))?;
    let subject = namespace.subject("user", &name);
    let groups = attribute_values(a, groups_attribute);
    if groups.len() > MAX_GROUPS
        || groups
            .iter()
            .any(|g| g.is_empty() || g.len() > MAX_GROUP_LEN || g.trim() != g)
    {
        return Err(Refusal::BadPerson(format!(
            "the {groups_attribute} attribute has more than {MAX_GROUPS} values, or an empty, over-long or space-padded one"
        )));
    }
    let mut groups = groups
        .iter()
        .map(|g| namespace.group(g))
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| {
            Refusal::BadPerson(format!(
                "the {groups_attribute} attribute names a group in another identity provider's namespace"
            ))
        })?;
    groups.sort();
    groups.dedup();
    Ok(Principal {
        kind: PrincipalKind::of_subject(&subject),
        subject,
        groups,
        via: AuthMethod::GatewayToken {
            token_id: String::new(),
            on_behalf_of: None,
            audience: None,
        },
    })
}

/// Every value of the attribute called `name` (by Name or FriendlyName).
fn attribute_values(a: &Assertion, name: &str) -> Vec<String> {
    a.attribute_statements
        .iter()
        .flatten()
        .flat_map(|s| &s.attributes)
        .filter(|at| at.name.as_deref() == Some(name) || at.friendly_name.as_deref() == Some(name))
        .flat_map(|at| &at.values)
        .filter_map(|v| v.value.clone())
        .collect()
}

/// When the assertion stops being usable (Unix seconds).
fn expiry(a: &Assertion) -> Option<i64> {
    let conditions = a.conditions.as_ref().and_then(|c| c.not_on_or_after);
    let confirmations = a
        .subject
        .as_ref()
        .and_then(|s| s.subject_confirmations.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.subject_confirmation_data.as_ref()?.not_on_or_after);
    conditions
        .into_iter()
        .chain(confirmations)
        .map(|t| t.timestamp())
        .max()
}

/// Transforms a SAML signature uses (SAML core §5.4.4): enveloped
/// signature and canonicalisation; nothing that runs code or queries.
const TRANSFORMS: &[&str] = &[
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments",
];
/// Signatures in one answer at most (the response's and the assertion's).
const MAX_SIGNATURES: usize = 2;
/// Elements, and nesting depth, in one answer at most (a real one has a
/// few dozen elements, nested under ten deep).
const MAX_ELEMENTS: usize = 5_000;
const MAX_DEPTH: usize = 32;

/// Refuse, before libxmlsec1 sees it, what SAML's signature profile never
/// needs and libxmlsec1 would act on while checking a signature it then
/// finds bad: references to anything but an element of this document
/// (`#ID`), transforms other than enveloped-signature and
/// canonicalisation (XPath and XSLT run for as long as the document makes
/// them), `RetrievalMethod` (a key fetched from elsewhere), more than two
/// signatures, another encoding than UTF-8, a DTD. Names are matched
/// without their namespace, so no prefix or namespace trick hides one.
/// Written by hand because samael offers no way to set libxmlsec1's
/// allowed references and transforms (`xmlSecDSigCtx`), and our code has
/// no `unsafe` to set them itself.
fn check_shape(xml: &str) -> Result<(), &'static str> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut depth, mut elements, mut signatures) = (0usize, 0usize, 0usize);
    loop {
        let event = reader
            .read_event()
            .map_err(|_| "the answer is not well-formed XML")?;
        let (e, opens) = match &event {
            Event::Eof => return Ok(()),
            Event::DocType(_) => return Err("a DTD is not allowed"),
            Event::Decl(d) => {
                let utf8 = match d.encoding() {
                    None => true,
                    Some(Ok(enc)) => enc.eq_ignore_ascii_case(b"utf-8"),
                    Some(Err(_)) => false,
                };
                if !utf8 {
                    return Err("only UTF-8 is accepted");
                }
                continue;
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                continue;
            }
            Event::Start(e) => (e, true),
            Event::Empty(e) => (e, false),
            _ => continue,
        };
        elements += 1;
        if opens {
            depth += 1;
        }
        if elements > MAX_ELEMENTS || depth > MAX_DEPTH {
            return Err("the answer is larger or deeper than a SAML response is");
        }
        let attr = |name: &[u8]| -> Result<Option<String>, &'static str> {
            for a in e.attributes() {
                let a = a.map_err(|_| "the answer is not well-formed XML")?;
                if a.key.local_name().as_ref() == name {
                    let v = a
                        .normalized_value(quick_xml::XmlVersion::default())
                        .map_err(|_| "the answer is not well-formed XML")?;
                    return Ok(Some(v.into_owned()));
                }
            }
            Ok(None)
        };
        match e.local_name().as_ref() {
            b"Signature" => {
                signatures += 1;
                if signatures > MAX_SIGNATURES {
                    return Err("more signatures than a SAML response has");
                }
            }
            b"Reference" => {
                let uri = attr(b"URI")?.unwrap_or_default();
                let id = uri.strip_prefix('#').unwrap_or("");
                let bare_name = !id.is_empty()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                if !bare_name {
                    return Err("a signature may only refer to an element of the answer (#ID)");
                }
            }
            b"Transform" | b"CanonicalizationMethod" => {
                let alg = attr(b"Algorithm")?.unwrap_or_default();
                if !TRANSFORMS.contains(&alg.as_str()) {
                    return Err(
                        "a signature transform other than enveloped-signature or canonicalisation",
                    );
                }
            }
            b"RetrievalMethod" | b"KeyInfoReference" | b"XPath" | b"XPointer" | b"XSLT" => {
                return Err("a signature that fetches or queries");
            }
            _ => {}
        }
    }
}

/// Whether an XML document declares a DTD (or entities), or could hide
/// one from this check: NUL bytes mean another encoding than UTF-8
/// (UTF-16 is valid UTF-8 byte by byte), which libxml2 would honour.
/// The provider's entity ID from its metadata (who names the people),
/// for the naming the store compares between starts; `None` when the
/// metadata does not read (then the sign-in refuses to start anyway).
pub fn idp_entity_id(cfg: &Saml) -> Option<String> {
    let xml = std::fs::read_to_string(&cfg.idp_metadata).ok()?;
    if has_dtd(&xml) {
        return None;
    }
    xml.parse::<EntityDescriptor>().ok()?.entity_id
}

fn has_dtd(xml: &str) -> bool {
    let upper = xml.to_ascii_uppercase();
    upper.contains("<!DOCTYPE") || upper.contains("<!ENTITY") || xml.contains('\0')
}

/// The HTTP-Redirect binding's encoding: raw DEFLATE, then base64
/// (SAML bindings §3.4.4.1).
fn deflate(xml: &str) -> Result<String, String> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(xml.as_bytes()).map_err(|e| e.to_string())?;
    Ok(STANDARD.encode(enc.finish().map_err(|e| e.to_string())?))
}

fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// At most 300 characters of a message that may quote the response.
fn bounded(s: &str) -> String {
    s.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_identity::Namespace;

    fn assertion(xml: &str) -> Assertion {
        xml.parse().expect("test assertion parses")
    }

    const NS: &str = r#"xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion""#;

    fn with(conditions: &str, attributes: &str, name_id: &str) -> Assertion {
        assertion(&format!(
            r#"<saml:Assertion {NS} ID="a1" IssueInstant="2026-01-01T00:00:00Z" Version="2.0">
<saml:Issuer>https://idp.test</saml:Issuer>
<saml:Subject><saml:NameID>{name_id}</saml:NameID></saml:Subject>
{conditions}
<saml:AttributeStatement>{attributes}</saml:AttributeStatement>
</saml:Assertion>"#
        ))
    }

    const FOR_US: &str = r#"<saml:Conditions NotOnOrAfter="2026-01-01T00:05:00Z"><saml:AudienceRestriction><saml:Audience>https://gw/saml/metadata</saml:Audience></saml:AudienceRestriction></saml:Conditions>"#;

    #[test]
    fn an_audience_naming_this_gateway_is_required() {
        let ok = with(FOR_US, "", "alice");
        assert!(check_audience(&ok, "https://gw/saml/metadata").is_ok());
        assert!(matches!(
            check_audience(&ok, "https://other/saml/metadata"),
            Err(Refusal::Invalid(_))
        ));
        let none = with("", "", "alice");
        assert!(matches!(
            check_audience(&none, "https://gw/saml/metadata"),
            Err(Refusal::NoAudience)
        ));
        // Two restrictions: both must be met.
        let two = with(
            r#"<saml:Conditions><saml:AudienceRestriction><saml:Audience>https://gw/saml/metadata</saml:Audience></saml:AudienceRestriction><saml:AudienceRestriction><saml:Audience>https://other</saml:Audience></saml:AudienceRestriction></saml:Conditions>"#,
            "",
            "alice",
        );
        assert!(check_audience(&two, "https://gw/saml/metadata").is_err());
    }

    #[test]
    fn the_person_comes_from_the_name_id_or_an_attribute() {
        let attrs = r#"<saml:Attribute Name="uid"><saml:AttributeValue>bob</saml:AttributeValue></saml:Attribute>
<saml:Attribute Name="groups"><saml:AttributeValue>ops</saml:AttributeValue><saml:AttributeValue>admins</saml:AttributeValue><saml:AttributeValue>ops</saml:AttributeValue></saml:Attribute>"#;
        let a = with(FOR_US, attrs, "alice");
        let p = person_of(&a, None, "groups", &Namespace::default()).unwrap();
        assert_eq!(p.subject, "user:alice");
        assert_eq!(p.groups, ["admins", "ops"]);
        assert_eq!(p.kind, PrincipalKind::Human);
        assert_eq!(
            person_of(&a, Some("uid"), "groups", &Namespace::default())
                .unwrap()
                .subject,
            "user:bob"
        );
        assert!(matches!(
            person_of(&a, Some("mail"), "groups", &Namespace::default()),
            Err(Refusal::BadPerson(_))
        ));
        // A name that would be another kind of principal, or is not a
        // name, or is padded (" alice" is not alice).
        for bad in ["agent:x y", "a\u{202e}b", " ", " alice", "alice\n"] {
            let xml = format!(
                r#"<saml:Assertion {NS} ID="a1" IssueInstant="2026-01-01T00:00:00Z" Version="2.0"><saml:Issuer>https://idp.test</saml:Issuer><saml:Subject><saml:NameID>{bad}</saml:NameID></saml:Subject></saml:Assertion>"#
            );
            // Refused when read, or when named.
            if let Ok(a) = xml.parse::<Assertion>() {
                assert!(
                    person_of(&a, None, "groups", &Namespace::default()).is_err(),
                    "{bad:?}"
                );
            }
        }
    }

    #[test]
    fn a_namespace_is_put_before_the_name_and_groups() {
        let attrs = r#"<saml:Attribute Name="groups"><saml:AttributeValue>ops</saml:AttributeValue><saml:AttributeValue>corp/admins</saml:AttributeValue></saml:Attribute>"#;
        let a = with(FOR_US, attrs, "alice");
        let own = Namespace::Own("partner".into());
        let p = person_of(&a, None, "groups", &own).unwrap();
        assert_eq!(p.subject, "user:partner/alice");
        assert_eq!(p.groups, ["partner/corp/admins", "partner/ops"]);
        // Bare, with another provider's namespace `corp`: its group is not
        // this provider's to give.
        let bare = Namespace::Bare {
            reserved: vec!["corp".into()],
        };
        assert!(matches!(
            person_of(&a, None, "groups", &bare),
            Err(Refusal::BadPerson(_))
        ));
        // A name holding `/` could pose as a namespaced person.
        let slash = with(FOR_US, "", "corp/alice");
        for ns in [own, bare] {
            assert!(person_of(&slash, None, "groups", &ns).is_err());
        }
    }

    #[test]
    fn expiry_is_the_latest_bound_the_assertion_names() {
        let a = with(FOR_US, "", "alice");
        assert_eq!(
            expiry(&a),
            Some(
                chrono::DateTime::parse_from_rfc3339("2026-01-01T00:05:00Z")
                    .unwrap()
                    .timestamp()
            )
        );
        assert_eq!(expiry(&with("", "", "alice")), None);
    }

    #[test]
    fn dtds_and_plain_http_are_refused() {
        assert!(has_dtd(
            "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"b\">]><x/>"
        ));
        assert!(!has_dtd("<x/>"));
        assert!(has_dtd("<!doctype x><x/>"));
        let utf16: String = "<!DOCTYPE x><x/>".chars().flat_map(|c| [c, '\0']).collect();
        assert!(has_dtd(&utf16));
        assert!(is_loopback_http("http://127.0.0.1:8080/sso"));
        assert!(is_loopback_http("http://localhost/sso"));
        assert!(!is_loopback_http("http://127.0.0.1.evil.test/sso"));
        assert!(!is_loopback_http("http://idp.example.com/sso"));
    }

    const SIGNED: &str = r##"<?xml version="1.0" encoding="UTF-8"?><samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="r1"><ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/><ds:Reference URI="#r1"><ds:Transforms><ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/><ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms></ds:Reference></ds:SignedInfo></ds:Signature></samlp:Response>"##;

    #[test]
    fn signatures_are_shaped_as_saml_makes_them() {
        assert_eq!(check_shape(SIGNED), Ok(()));
        for (from, to) in [
            // Anything but an element of this document.
            (r##"URI="#r1""##, r#"URI="http://127.0.0.1:1/x""#),
            (r##"URI="#r1""##, r#"URI="file:///dev/zero""#),
            (r##"URI="#r1""##, r##"URI="#xpointer(/)""##),
            (r##"URI="#r1""##, r#"URI="""#),
            // Transforms that run queries or code.
            ("xmldsig#enveloped-signature", "TR/1999/REC-xpath-19991116"),
            (
                r#"xml-exc-c14n#"/></ds:Transforms>"#,
                r#"xml-exc-c14n#"><ds:XPath>count(//.)</ds:XPath></ds:Transform></ds:Transforms>"#,
            ),
            (
                r#"CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#""#,
                r#"CanonicalizationMethod Algorithm="http://www.w3.org/TR/1999/REC-xslt-19991116""#,
            ),
            // A key from elsewhere; another encoding; a DTD.
            (
                "</ds:SignedInfo>",
                r#"</ds:SignedInfo><ds:KeyInfo><ds:RetrievalMethod URI="http://x"/></ds:KeyInfo>"#,
            ),
            (r#"encoding="UTF-8""#, r#"encoding="UTF-7""#),
            ("?><samlp", "?><!DOCTYPE r><samlp"),
        ] {
            let bad = SIGNED.replacen(from, to, 1);
            assert_ne!(bad, SIGNED, "{from}");
            assert!(check_shape(&bad).is_err(), "{to}");
        }
        // A third signature, and depth, are beyond any response.
        let sig = &SIGNED
            [SIGNED.find("<ds:Signature").unwrap()..SIGNED.find("</samlp:Response>").unwrap()];
        let three = SIGNED.replacen(
            "</samlp:Response>",
            &format!("{sig}{sig}</samlp:Response>"),
            1,
        );
        assert!(check_shape(&three).is_err());
        let deep = format!("{}{}", "<a>".repeat(40), "</a>".repeat(40));
        assert!(check_shape(&deep).is_err());
        assert!(check_shape("<a><b></a>").is_err());
    }

    #[test]
    fn the_request_is_deflated_then_base64() {
        let enc = deflate("<samlp:AuthnRequest/>").unwrap();
        let raw = STANDARD.decode(enc).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::DeflateDecoder::new(&raw[..]), &mut out)
            .unwrap();
        assert_eq!(out, "<samlp:AuthnRequest/>");
    }
}
