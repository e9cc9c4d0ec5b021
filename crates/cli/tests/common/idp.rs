//! A real OpenID provider for the identity tests: panva's `oidc-provider`
//! (certified) run by Node.js from `tests/node/idp.mjs`, over HTTPS on
//! loopback with a certificate from a test CA.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use portcullis_tls::{CertificateAuthority, LeafKind};

pub const CI_CLIENT: &str = "ci-bot";
pub const CI_SECRET: &str = "ci-bot-secret-not-a-canary";
pub const CLI_CLIENT: &str = "portcullis-cli";
pub const AUDIENCE: &str = "https://portcullis.test";
/// The gateway's own client at the provider (`[oauth]`).
pub const GATEWAY_CLIENT: &str = "portcullis-gateway";

pub fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

/// `npm ci` once per test binary when the harness's packages (the IdP
/// and the MCP client SDK) are missing
/// (the README's test command must work on a fresh clone).
pub fn ensure_packages() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = harness_dir();
        if dir.join("node_modules/oidc-provider").exists()
            && dir.join("node_modules/@modelcontextprotocol/sdk").exists()
            && dir.join("node_modules/playwright-core").exists()
        {
            return;
        }
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the OIDC tests (Node.js 20+)");
        assert!(st.success(), "npm ci in {} failed", dir.display());
    });
}

/// One provider process; its issuer once it prints the ready line, or a
/// report of what it was doing when it did not within the wait.
fn spawn_provider(
    dir: &Path,
    user: &str,
    groups: &str,
    extra: &[&str],
    attempt: u32,
) -> Result<(Child, String), String> {
    let log_path = dir.join(format!("idp-{attempt}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("node")
        .arg(harness_dir().join("idp.mjs"))
        .args(["--cert", dir.join("idp.pem").to_str().unwrap()])
        .args(["--key", dir.join("idp.key").to_str().unwrap()])
        .args(["--user", user, "--groups", groups])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("node is needed for the OIDC tests");
    // Node starts in about a second here; a minute is generous even while
    // the suite loads both cores.
    match super::ready_line(&mut child, "idp: ready issuer=", Duration::from_secs(60)) {
        Ok(issuer) => Ok((child, issuer)),
        Err(e) => {
            let proc_file = |f: &str| {
                std::fs::read_to_string(format!("/proc/{}/{f}", child.id())).unwrap_or_default()
            };
            let state = proc_file("status")
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("State: gone")
                .to_string();
            let report = format!(
                "({e:?}; {state}; wchan {}; exit {:?})\n{}",
                proc_file("wchan"),
                child.try_wait(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            let _ = child.kill();
            let _ = child.wait();
            Err(report)
        }
    }
}

pub struct Idp {
    child: Child,
    pub issuer: String,
    /// The CA that signed the provider's HTTPS certificate.
    pub ca: PathBuf,
}

impl Idp {
    /// Start a provider whose interactive logins succeed as `user` in
    /// `groups`. `dir` receives its certificate and log.
    pub fn start(dir: &Path, user: &str, groups: &str) -> Idp {
        Self::start_with(dir, user, groups, &[])
    }

    /// A provider that also has the gateway as its client, with `secret`
    /// (written to `gateway_dir/idp-secret` for the gateway's config).
    pub fn start_for_gateway(gateway_dir: &Path, user: &str, groups: &str, secret: &str) -> Idp {
        std::fs::write(gateway_dir.join("idp-secret"), secret).unwrap();
        let args = [
            "--gateway-client",
            GATEWAY_CLIENT,
            "--gateway-secret",
            secret,
        ];
        Self::start_with(&gateway_dir.join("idp"), user, groups, &args)
    }

    /// `[[oidc]]` trusting this provider and `[oauth]` signing people in
    /// through it (see [`Idp::start_for_gateway`]).
    pub fn oauth_config(&self) -> String {
        format!(
            r#"
[[oidc]]
issuer = "{issuer}"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256", "RS256"]
ca_file = "{ca}"

[oauth]
client_id = "{GATEWAY_CLIENT}"
client_secret = "file:idp-secret"
scopes = "openid groups"
"#,
            issuer = self.issuer,
            ca = self.ca.display(),
        )
    }

    /// [`Idp::start`] with more `idp.mjs` options (e.g. `--access-ttl`).
    ///
    /// Node has twice (once in CI, once here under a loaded suite) sat
    /// for the full wait without printing its ready line while other
    /// providers in the same binary started in a second or two, so a
    /// start that stalls is reported (with what the process was doing)
    /// and retried with a fresh process rather than failing the test.
    pub fn start_with(dir: &Path, user: &str, groups: &str, extra: &[&str]) -> Idp {
        ensure_packages();
        std::fs::create_dir_all(dir).unwrap();
        let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
        let leaf = ca
            .issue(
                LeafKind::Server,
                &["127.0.0.1".into()],
                Duration::from_secs(86400),
            )
            .unwrap();
        std::fs::write(dir.join("idp.pem"), leaf.cert_pem).unwrap();
        std::fs::write(dir.join("idp.key"), leaf.key_pem).unwrap();
        const ATTEMPTS: u32 = 3;
        let mut stalls = String::new();
        for attempt in 1..=ATTEMPTS {
            match spawn_provider(dir, user, groups, extra, attempt) {
                Ok((child, issuer)) => {
                    return Idp {
                        child,
                        issuer,
                        ca: ca.cert_path().to_path_buf(),
                    };
                }
                Err(report) => {
                    eprintln!("test IdP start {attempt}/{ATTEMPTS} stalled: {report}");
                    stalls.push_str(&report);
                }
            }
        }
        panic!("the test IdP did not start in {ATTEMPTS} attempts:\n{stalls}");
    }

    fn curl(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "--cacert",
                self.ca.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "IdP reply is not JSON: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// An access token (JWT) for the `ci-bot` client (client credentials).
    pub fn client_credentials_token(&self) -> String {
        let v = self.curl(&[
            "-u",
            &format!("{CI_CLIENT}:{CI_SECRET}"),
            "-d",
            "grant_type=client_credentials",
            "-d",
            &format!("resource={AUDIENCE}"),
            &format!("{}/token", self.issuer),
        ]);
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {v}"))
            .to_string()
    }

    /// Play the user's browser for a device-flow `verification_uri_complete`:
    /// open the page, submit the code, confirm, follow to the end.
    pub fn approve_device(&self, verification_uri_complete: &str, jar: &Path) {
        let ca = self.ca.to_str().unwrap();
        let jar = jar.to_str().unwrap();
        let page = |args: &[&str]| -> String {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "-L",
                    "--max-time",
                    "20",
                    "--cacert",
                    ca,
                    "-c",
                    jar,
                    "-b",
                    jar,
                ])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let hidden = |html: &str, name: &str| -> String {
            let marker = format!("name=\"{name}\" value=\"");
            let start = html
                .find(&marker)
                .unwrap_or_else(|| panic!("no {name} in device page: {html}"))
                + marker.len();
            html[start..].split('"').next().unwrap().to_string()
        };
        let device = format!("{}/device", self.issuer);
        // 1. The code-entry page, prefilled.
        let p1 = page(&[verification_uri_complete]);
        let code = hidden(&p1, "user_code");
        // 2. Submit the code: the confirmation page.
        let p2 = page(&[
            "--data-urlencode",
            &format!("xsrf={}", hidden(&p1, "xsrf")),
            "--data-urlencode",
            &format!("user_code={code}"),
            &device,
        ]);
        // 3. Confirm: login and consent (automatic), then the success page.
        let p3 = page(&[
            "--data-urlencode",
            &format!("xsrf={}", hidden(&p2, "xsrf")),
            "--data-urlencode",
            &format!("user_code={code}"),
            "--data-urlencode",
            "confirm=yes",
            &device,
        ]);
        assert!(p3.contains("Sign-in Success"), "device approval: {p3}");
    }

    /// Play the browser for an authorization-code URL: follow every
    /// redirect, ending at the CLI's loopback callback.
    pub fn follow_authorize(&self, url: &str, jar: &Path) -> String {
        let out = Command::new("curl")
            .args(["-sS", "-L", "--max-time", "20"])
            .args(["--cacert", self.ca.to_str().unwrap()])
            .args(["-c", jar.to_str().unwrap(), "-b", jar.to_str().unwrap()])
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
