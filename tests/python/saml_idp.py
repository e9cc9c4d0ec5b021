"""A SAML 2.0 identity provider for the console tests, built on pysaml2's
IdP (`saml2.server.Server`, signing with xmlsec1): HTTP-Redirect binding
for requests, HTTP-POST for responses, on 127.0.0.1.

    python3 saml_idp.py --dir DIR --user alice=admins,approvers --user bob=
        [--sp-metadata-url URL --sp-ca CA]

Writes DIR/idp-metadata.xml (and a signing key made with openssl), prints
`saml-idp: ready port=N`. The service provider's metadata is fetched from
--sp-metadata-url on the first request (the gateway starts after the IdP,
which it needs to know first).

GET /sso/redirect?SAMLRequest=… shows a sign-in form (what a browser
sees); with `&user=NAME` it answers at once (what curl uses). `&variant=`
makes the answer hostile, for the tests that try to forge a sign-in:
  ok              signed response and assertion
  unsigned        no signature at all
  wrong-audience  signed, for another service provider's entity ID
  expired         signed, its validity ended ten minutes ago
  other-key       signed with a key the gateway was never told about
  wrapped         a signed assertion for NAME, and before it an unsigned
                  copy naming `mallory` in the admins group (signature
                  wrapping)
  comment         signed for NAME, then `<!---->` put after the first dot
                  of every NameID and attribute value: canonical XML
                  drops comments, so the signature still holds, and a
                  reader that takes the first text node reads a prefix
                  (`alice.evil` would become `alice`)
"""

import argparse
import base64
import html
import os
import re
import ssl
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.authn_context import PASSWORD
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.saml import NAMEID_FORMAT_UNSPECIFIED, NameID
from saml2.server import Server

SHA256_SIG = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256_DIGEST = "http://www.w3.org/2001/04/xmlenc#sha256"
OTHER_SP = "https://other.example/saml/metadata"


def keypair(d, name):
    key, cert = os.path.join(d, f"{name}.key"), os.path.join(d, f"{name}.crt")
    if not os.path.exists(cert):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", key, "-out", cert],
            check=True, capture_output=True,
        )
    return key, cert


def config(base, key, cert, sp_metadata, lifetime_minutes):
    c = {
        "entityid": f"{base}/metadata",
        "service": {
            "idp": {
                "endpoints": {
                    "single_sign_on_service": [(f"{base}/sso/redirect", BINDING_HTTP_REDIRECT)],
                },
                "policy": {
                    "default": {
                        "lifetime": {"minutes": lifetime_minutes},
                        "attribute_restrictions": None,
                        "name_form": "urn:oasis:names:tc:SAML:2.0:attrname-format:basic",
                    },
                },
                "name_id_format": [NAMEID_FORMAT_UNSPECIFIED],
                "want_authn_requests_signed": False,
            },
        },
        "key_file": key,
        "cert_file": cert,
        "xmlsec_binary": "/usr/bin/xmlsec1",
        "signing_algorithm": SHA256_SIG,
        "digest_algorithm": SHA256_DIGEST,
        "metadata": {"local": sp_metadata} if sp_metadata else {},
    }
    conf = IdPConfig()
    conf.load(c)
    return conf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--user", action="append", default=[])
    ap.add_argument("--sp-metadata-url")
    ap.add_argument("--sp-ca")
    args = ap.parse_args()
    users = {}
    for u in args.user:
        name, _, groups = u.partition("=")
        users[name] = [g for g in groups.split(",") if g]

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), None)
    port = httpd.server_address[1]
    base = f"http://127.0.0.1:{port}"
    key, cert = keypair(args.dir, "idp-signing")
    other_key, other_cert = keypair(args.dir, "idp-impostor")
    with open(os.path.join(args.dir, "idp-metadata.xml"), "w") as f:
        f.write(create_metadata_string(None, config(base, key, cert, None, 5)).decode())

    lock = threading.Lock()
    servers = {}

    def server(variant):
        """The pysaml2 IdP for a variant, made once the SP is known."""
        with lock:
            if variant not in servers:
                sp_file = os.path.join(args.dir, "sp-metadata.xml")
                if not os.path.exists(sp_file):
                    ctx = ssl.create_default_context(cafile=args.sp_ca)
                    with urllib.request.urlopen(args.sp_metadata_url, context=ctx) as r:
                        data = r.read()
                    with open(sp_file, "wb") as f:
                        f.write(data)
                k, c = (other_key, other_cert) if variant == "other-key" else (key, cert)
                lifetime = -10 if variant == "expired" else 5
                files = [sp_file]
                if variant == "wrong-audience":
                    # The same service provider under another entity ID,
                    # so pysaml2 will address an assertion to it.
                    other = os.path.join(args.dir, "other-sp-metadata.xml")
                    with open(sp_file) as f:
                        xml = re.sub(r'entityID="[^"]+"', f'entityID="{OTHER_SP}"', f.read(), count=1)
                    with open(other, "w") as f:
                        f.write(xml)
                    files.append(other)
                servers[variant] = Server(config=config(base, k, c, files, lifetime))
            return servers[variant]

    def answer(saml_request, user, variant):
        idp = server(variant)
        req = idp.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT).message
        sp = req.issuer.text
        acs = req.assertion_consumer_service_url
        audience = OTHER_SP if variant == "wrong-audience" else sp
        signed = variant != "unsigned"
        identity = {"uid": [user], "groups": users.get(user, [])}
        xml = idp.create_authn_response(
            identity,
            in_response_to=req.id,
            destination=acs,
            sp_entity_id=audience,
            name_id=NameID(format=NAMEID_FORMAT_UNSPECIFIED, text=user),
            authn={"class_ref": PASSWORD},
            sign_response=signed and variant != "wrapped",
            sign_assertion=signed,
            sign_alg=SHA256_SIG,
            digest_alg=SHA256_DIGEST,
        )
        xml = str(xml)
        if variant == "wrapped":
            xml = wrap(xml)
        if variant == "comment":
            xml = re.sub(r"(<(\w+:)?(NameID|AttributeValue)\b[^>]*>)([^<.]*)\.",
                         r"\1\4<!---->.", xml)
        return acs, base64.b64encode(xml.encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send(self, status, body):
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def post_form(self, acs, response):
            # What an IdP sends the browser: a form that posts itself.
            self.send(200, (
                "<!doctype html><html><body onload=\"document.forms[0].submit()\">"
                f"<form method=\"post\" action=\"{html.escape(acs)}\">"
                f"<input type=\"hidden\" name=\"SAMLResponse\" value=\"{response}\">"
                "<noscript><button type=\"submit\">Continue</button></noscript>"
                "</form></body></html>"
            ))

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/metadata":
                with open(os.path.join(args.dir, "idp-metadata.xml")) as f:
                    return self.send(200, f.read())
            if url.path != "/sso/redirect" or "SAMLRequest" not in q:
                return self.send(404, "not found")
            if "user" in q:
                try:
                    acs, resp = answer(q["SAMLRequest"], q["user"], q.get("variant", "ok"))
                except Exception as e:  # noqa: BLE001 - shown to the test
                    return self.send(400, f"saml-idp: {e!r}")
                return self.post_form(acs, resp)
            self.send(200, (
                "<!doctype html><html><head><title>Test IdP sign-in</title></head><body>"
                "<h1>Sign in to the test IdP</h1><form method=\"post\" action=\"/login\">"
                f"<input type=\"hidden\" name=\"SAMLRequest\" value=\"{html.escape(q['SAMLRequest'])}\">"
                "<label>User <input name=\"user\" id=\"user\"></label>"
                "<button type=\"submit\" id=\"signin\">Sign in</button></form></body></html>"
            ))

        def do_POST(self):
            n = int(self.headers.get("content-length", "0"))
            q = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
            if self.path != "/login" or q.get("user") not in users:
                return self.send(403, "unknown user")
            acs, resp = answer(q["SAMLRequest"], q["user"], "ok")
            self.post_form(acs, resp)

    httpd.RequestHandlerClass = Handler
    print(f"saml-idp: ready port={port}", flush=True)
    httpd.serve_forever()


def wrap(xml):
    """Put an unsigned copy of the signed assertion, naming mallory in the
    admins group, in front of it."""
    m = re.search(r"<(\w+:)?Assertion\b.*?</\1Assertion>", xml, re.S)
    if not m:
        raise ValueError("no assertion to wrap")
    signed = m.group(0)
    evil = re.sub(r"<(\w+:)?Signature\b.*?</\1Signature>", "", signed, flags=re.S)
    evil = re.sub(r'ID="[^"]+"', 'ID="evil-assertion"', evil, count=1)
    evil = re.sub(r"(<(\w+:)?NameID\b[^>]*>)[^<]*", r"\1mallory", evil, count=1)
    evil = re.sub(r"(<(\w+:)?AttributeValue\b[^>]*>)[^<]*(</(\w+:)?AttributeValue>)",
                  r"\1admins\3", evil)
    return xml[: m.start()] + evil + xml[m.start():]


if __name__ == "__main__":
    sys.exit(main())
