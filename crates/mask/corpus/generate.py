#!/usr/bin/env python3
"""Generate the labelled masking corpus (corpus.jsonl), deterministically.

Each line: {"text": ..., "labels": [{"detector": NAME, "value": SUBSTRING}]}.
Positives in many formats, and near-misses that must NOT be found: Luhn-
invalid card numbers, IBANs with a wrong check digit, SSNs in never-issued
ranges, ISO dates and times, version strings, UUIDs, order numbers, octet
values over 255. Run: python3 crates/mask/corpus/generate.py > crates/mask/corpus/corpus.jsonl
"""
import json, random

rnd = random.Random(20261125)


def luhn_digit(body):
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def card(prefix, length, sep):
    body = prefix + "".join(rnd.choice("0123456789") for _ in range(length - len(prefix) - 1))
    num = body + luhn_digit(body)
    if sep and length == 16:
        return sep.join(num[i:i + 4] for i in range(0, 16, 4))
    if sep and length == 15:
        return sep.join([num[:4], num[4:10], num[10:]])
    return num


def bad_luhn(num):
    last = num[-1]
    return num[:-1] + str((int(last) + 1) % 10)


def iban(country, length):
    bban = "".join(rnd.choice("0123456789") for _ in range(length - 4))
    rearranged = bban + "".join(str(ord(c) - 55) for c in country) + "00"
    check = 98 - int(rearranged) % 97
    return f"{country}{check:02d}{bban}"


def spaced(s):
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4))


def ssn():
    return f"{rnd.randint(1, 665):03d}-{rnd.randint(1, 99):02d}-{rnd.randint(1, 9999):04d}"


def phone():
    return rnd.choice([
        f"+1 {rnd.randint(201, 989)} {rnd.randint(200, 999)} {rnd.randint(0, 9999):04d}",
        f"({rnd.randint(201, 989)}) {rnd.randint(200, 999)}-{rnd.randint(0, 9999):04d}",
        f"{rnd.randint(201, 989)}-{rnd.randint(200, 999)}-{rnd.randint(0, 9999):04d}",
        f"+44 20 {rnd.randint(1000, 9999)} {rnd.randint(1000, 9999)}",
        f"+49{rnd.randint(1000000000, 9999999999)}",
        # National formats (issue 17): Berlin, Munich, a UK mobile, Paris.
        f"+49 30 {rnd.randint(2000000, 9999999)}",
        f"030 {rnd.randint(2000000, 9999999)}",
        f"(089) {rnd.randint(2000000, 9999999)}",
        f"07700 900{rnd.randint(0, 999):03d}",
        f"+33 1 {rnd.randint(10, 99)} {rnd.randint(10, 99)} {rnd.randint(10, 99)} {rnd.randint(10, 99)}",
    ])


def email():
    user = rnd.choice(["alice", "bob.smith", "j.doe+work", "ops-team", "x_y"])
    dom = rnd.choice(["example.com", "mail.example.org", "corp.example.co.uk", "example.io"])
    return f"{user}{rnd.randint(1, 99)}@{dom}"


def ipv4():
    return ".".join(str(rnd.randint(1, 254)) for _ in range(4))


def ipv6():
    return rnd.choice(["2001:db8::8a2e:370:7334", "fe80::1ff:fe23:4567:890a",
                       f"2001:db8:{rnd.randint(1, 65535):x}::{rnd.randint(1, 65535):x}"])


def alnum(n, chars="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"):
    return "".join(rnd.choice(chars) for _ in range(n))


def jwt():
    return "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + "eyJ" + alnum(30) + "." + alnum(43)


POSITIVES = {
    "card": lambda: card(rnd.choice(["4", "51", "55", "2221"]) if rnd.random() < 0.8 else "4", 16,
                         rnd.choice(["", " ", "-"])),
    "amex": lambda: card(rnd.choice(["34", "37"]), 15, rnd.choice(["", " "])),
    "iban": lambda: (lambda v: spaced(v) if rnd.random() < 0.5 else v)(iban(rnd.choice(["DE", "FR", "GB", "NL"]), rnd.choice([22, 27, 18]))),
    "ssn": ssn,
    "phone": phone,
    "email": email,
    "ipv4": ipv4,
    "ipv6": ipv6,
    "jwt": jwt,
    "aws_access_key": lambda: "AKIA" + alnum(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"),
    "github_token": lambda: "ghp_" + alnum(36),
    "stripe_key": lambda: "sk_live_" + alnum(24),
    "slack_token": lambda: "xoxb-" + str(rnd.randint(10**11, 10**12)) + "-" + alnum(24),
}
DETECTOR_OF = {"amex": "card"}

NEAR_MISSES = [
    lambda: bad_luhn(card("4", 16, "")),
    lambda: bad_luhn(card("5", 16, " ")),
    lambda: (lambda v: v[:2] + ("%02d" % ((int(v[2:4]) + 1) % 100)) + v[4:])(iban("DE", 22)),
    lambda: f"666-{rnd.randint(10, 99)}-{rnd.randint(1000, 9999)}",
    lambda: f"{rnd.randint(900, 999)}-{rnd.randint(10, 99)}-{rnd.randint(1000, 9999)}",
    lambda: f"2026-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d} {rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00",
    lambda: f"{rnd.randint(2020, 2026)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
    lambda: f"v{rnd.randint(1, 9)}.{rnd.randint(0, 20)}.{rnd.randint(0, 99)}",
    lambda: f"{rnd.randint(1, 9)}.{rnd.randint(0, 20)}.{rnd.randint(0, 9)}.{rnd.randint(300, 999)}",
    lambda: "550e8400-e29b-41d4-a716-" + alnum(12, "0123456789abcdef"),
    lambda: f"order #{rnd.randint(100000, 9999999)}",
    lambda: f"SKU-{rnd.randint(10**7, 10**8)}",
    lambda: f"{rnd.randint(100, 999)}-{rnd.randint(1000, 9999)}",
    lambda: "AKIA" + alnum(10),
    lambda: f"user at example dot com",
    lambda: f"12:30:45",
    # Look like national phone numbers, are not (issue 17).
    lambda: f"invoice 000{rnd.randint(10000, 99999)}",
    lambda: f"batch {rnd.randint(1000, 9999)} {rnd.randint(1000, 9999)}",
    lambda: f"{rnd.randint(1, 28):02d}.{rnd.randint(1, 12):02d}.{rnd.randint(2020, 2026)}",
    lambda: f"+999 {rnd.randint(1000, 9999)} {rnd.randint(1000, 9999)}",
]

TEMPLATES = [
    "Customer record: {}.",
    "please contact {} asap",
    '{{"field": "{}"}}',
    "value={} ;",
    "{}",
    "id 42, ref {}, status ok",
    "log line [INFO] peer={} done",
]


def main():
    lines = []
    for name, gen in POSITIVES.items():
        for _ in range(60):
            v = gen()
            text = rnd.choice(TEMPLATES).format(v)
            lines.append({"text": text, "labels": [{"detector": DETECTOR_OF.get(name, name), "value": v}]})
    for gen in NEAR_MISSES:
        for _ in range(40):
            lines.append({"text": rnd.choice(TEMPLATES).format(gen()), "labels": []})
    # Mixed lines: several values next to each other.
    for _ in range(80):
        picks = rnd.sample(list(POSITIVES), 3)
        vals = [(DETECTOR_OF.get(p, p), POSITIVES[p]()) for p in picks]
        text = " | ".join(v for _, v in vals) + " | " + NEAR_MISSES[rnd.randrange(len(NEAR_MISSES))]()
        lines.append({"text": text, "labels": [{"detector": d, "value": v} for d, v in vals]})
    rnd.shuffle(lines)
    for l in lines:
        print(json.dumps(l))


if __name__ == "__main__":
    main()
