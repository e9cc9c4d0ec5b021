//! `portcullis mask`: run masking rules over standard input, to try rules
//! before deploying them.

use std::io::{Read, Write};

use anyhow::Context;
use clap::ValueEnum;
use portcullis_mask::{MaskSpec, Masker, RuleSet, Stats};

use crate::Cli;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Json,
    Text,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Use the rule that applies to this connection (from the config).
    #[arg(long)]
    connection: Option<String>,
    /// The caller's groups, for rules limited to groups (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// How to read the input [default: json if it parses, else text].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Print one JSON line per finding (detector, byte span, action)
    /// instead of the masked output.
    #[arg(long)]
    explain: bool,
}

pub(crate) fn run(cli: &Cli, args: &Args) -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading standard input")?;

    let config_path = cli.config_path();
    let (rules, hash_key) = if config_path.exists() {
        let c = portcullis_config::Config::load(&config_path)?;
        let key = match &c.masking.hash_key {
            Some(r) => Some(
                r.resolve()
                    .map_err(|e| anyhow::anyhow!("masking.hash_key: {e}"))?,
            ),
            None => None,
        };
        (c.masking.rules, key)
    } else if args.connection.is_some() {
        anyhow::bail!(
            "--connection needs a config, and there is none at {}",
            config_path.display()
        );
    } else {
        (Vec::new(), None)
    };
    let key = hash_key.as_ref().map(|k| k.expose().as_bytes());
    let set = RuleSet::new(&rules, key)?;
    let default;
    let masker: &Masker = match set.select(args.connection.as_deref().unwrap_or("*"), &args.groups)
    {
        Some(rule) => {
            eprintln!("using rule {:?}", rule.name);
            &rule.masker
        }
        None => {
            eprintln!("no configured rule applies; using every built-in detector with redact");
            default = Masker::new(&MaskSpec::default(), key)?;
            &default
        }
    };

    let text = String::from_utf8(input).context("the input is not UTF-8")?;
    let json: Option<serde_json::Value> = match args.format {
        Some(Format::Text) => None,
        Some(Format::Json) => {
            Some(serde_json::from_str(&text).context("--format json: the input is not JSON")?)
        }
        None => serde_json::from_str(&text).ok(),
    };
    let mut out = std::io::stdout().lock();
    let mut stats = Stats::new();
    match (json, args.explain) {
        (Some(mut v), false) => {
            masker.mask_json(&mut v, &mut stats);
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        (None, false) => {
            write!(out, "{}", masker.mask_str(&text, &mut stats))?;
        }
        (Some(v), true) => explain_json(masker, &v, "$", &mut out)?,
        (None, true) => {
            for f in masker.find(&text) {
                writeln!(out, "{}", serde_json::to_string(&f)?)?;
            }
        }
    }
    if !args.explain {
        let total: u64 = stats.values().sum();
        eprintln!(
            "masked {total} value(s): {}",
            serde_json::to_string(&stats)?
        );
    }
    Ok(())
}

/// Findings per string value of a JSON document, with its path; spans are
/// byte offsets within that value.
fn explain_json(
    m: &Masker,
    v: &serde_json::Value,
    path: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match v {
        serde_json::Value::String(s) => {
            for f in m.find(s) {
                let mut j = serde_json::to_value(&f)?;
                j["path"] = path.into();
                writeln!(out, "{j}")?;
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                explain_json(m, x, &format!("{path}[{i}]"), out)?;
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                explain_json(m, x, &format!("{path}.{k}"), out)?;
            }
        }
        _ => {}
    }
    Ok(())
}
