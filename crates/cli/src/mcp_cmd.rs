//! `portcullis mcp config`: the exact snippet each MCP client expects to
//! reach the gateway's `/mcp` endpoint. The token stays in the
//! environment (`PORTCULLIS_TOKEN`) rather than in the snippet, so the
//! output can be pasted into shared files and shown in terminals.

use clap::{Subcommand, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum McpClient {
    /// Anthropic's Claude Code (`claude mcp add`).
    ClaudeCode,
    /// Cursor (`~/.cursor/mcp.json` or `.cursor/mcp.json`).
    Cursor,
    /// OpenAI's Codex CLI (`~/.codex/config.toml`).
    Codex,
}

#[derive(Subcommand)]
pub(crate) enum McpCommand {
    /// The tools of an MCP connection and their approval state.
    Tools {
        #[arg(long)]
        connection: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a tool's changed definition, so it is listed and callable
    /// again.
    Approve {
        #[arg(long)]
        connection: String,
        #[arg(long)]
        tool: String,
    },
    /// Print the configuration snippet for an MCP client.
    Config {
        #[arg(long, value_enum)]
        client: McpClient,
        /// The gateway's URL.
        #[arg(long, env = "PORTCULLIS_URL")]
        gateway: String,
        /// The server's name in the client.
        #[arg(long, default_value = "portcullis")]
        name: String,
        /// The gateway's CA (PEM), when it is not publicly trusted: the
        /// snippet then says how to make the client trust it.
        #[arg(long, env = "PORTCULLIS_CA")]
        ca: Option<std::path::PathBuf>,
        /// How the client signs in: `oauth` (no token in the snippet; the
        /// client opens a browser), `token` (PORTCULLIS_TOKEN), or `auto`:
        /// oauth when the config (--config) has an [oauth] section.
        #[arg(long, value_enum, default_value = "auto")]
        auth: McpAuth,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum McpAuth {
    Auto,
    Oauth,
    Token,
}

pub(crate) async fn run(cli: &crate::Cli, cmd: &McpCommand) -> anyhow::Result<()> {
    let (client, gateway, name, ca, auth) = match cmd {
        McpCommand::Config {
            client,
            gateway,
            name,
            ca,
            auth,
        } => (client, gateway, name, ca, auth),
        McpCommand::Tools { connection, json } => {
            let (_, store) = cli.load().await?;
            let pins = store.tool_pins(connection).await?;
            if pins.is_empty() {
                eprintln!(
                    "no tools seen yet on {connection:?} (they are pinned when a client first lists them)"
                );
            }
            for p in pins {
                let state = if p.pending_hash.is_some() {
                    "changed: held until approved"
                } else {
                    "approved"
                };
                if *json {
                    println!(
                        "{}",
                        serde_json::json!({"connection": p.connection, "tool": p.tool, "hash": p.hash,
                            "pending_hash": p.pending_hash, "state": if p.pending_hash.is_some() { "held" } else { "approved" }})
                    );
                } else {
                    println!("{}  {}  {state}", p.tool, &p.hash[..12.min(p.hash.len())]);
                }
            }
            return Ok(());
        }
        McpCommand::Approve { connection, tool } => {
            let (config, store) = cli.load().await?;
            let now = portcullis_identity::unix_now();
            match store.approve_tool(connection, tool, now).await? {
                Some(hash) => {
                    crate::token_cmd::audit_admin(
                        &store,
                        config.dir(),
                        "mcp_tool_approved",
                        serde_json::json!({"connection": connection, "tool": tool, "hash": hash}),
                    )
                    .await?;
                    eprintln!("approved the new definition of {tool:?} on {connection:?}");
                    return Ok(());
                }
                None => {
                    anyhow::bail!("{tool:?} on {connection:?} has no changed definition waiting")
                }
            }
        }
    };
    let gateway = gateway.trim_end_matches('/');
    if !gateway.starts_with("https://") {
        anyhow::bail!("--gateway must be an https:// URL (the gateway accepts TLS only)");
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        anyhow::bail!("--name: letters, digits, - and _ only");
    }
    let oauth = match auth {
        McpAuth::Oauth => true,
        McpAuth::Token => false,
        // A config that cannot be read says nothing: the token form.
        McpAuth::Auto => portcullis_config::Config::load(&cli.config_path())
            .map(|c| c.oauth.is_some())
            .unwrap_or(false),
    };
    if oauth {
        print!("{}", oauth_snippet(*client, gateway, name));
    } else {
        print!("{}", snippet(*client, gateway, name));
    }
    if let Some(ca) = ca {
        let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.clone());
        eprintln!(
            "note: the gateway's certificate is from a private CA; start the client with\n  export {}={}",
            ca_variable(*client),
            ca.display()
        );
    }
    if oauth {
        eprintln!(
            "note: the client signs you in through the gateway in a browser the first time it connects; no token to export"
        );
    } else {
        eprintln!(
            "note: export PORTCULLIS_TOKEN=<your token> (or `eval \"$(portcullis env)\"`) before starting the client"
        );
    }
    Ok(())
}

/// The snippet without a token: the client finds the gateway's
/// authorization server from the 401 and signs the person in (OAuth 2.1,
/// as the MCP specification has it).
fn oauth_snippet(client: McpClient, gateway: &str, name: &str) -> String {
    let url = format!("{gateway}/mcp");
    match client {
        McpClient::ClaudeCode => {
            format!("claude mcp add --scope project --transport http {name} {url}\n")
        }
        McpClient::Cursor => {
            let v = serde_json::json!({"mcpServers": {name: {"url": url}}});
            format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        // Codex signs in with `codex mcp login NAME` once the server is
        // configured without a bearer token.
        McpClient::Codex => {
            format!("[mcp_servers.{name}]\nurl = \"{url}\"\n# then: codex mcp login {name}\n")
        }
    }
}

/// Where each client reads extra trusted roots from: Claude Code and
/// Cursor run on Node.js; Codex is a Rust binary that reads
/// `CODEX_CA_CERTIFICATE` (then `SSL_CERT_FILE`).
fn ca_variable(client: McpClient) -> &'static str {
    match client {
        McpClient::ClaudeCode | McpClient::Cursor => "NODE_EXTRA_CA_CERTS",
        McpClient::Codex => "CODEX_CA_CERTIFICATE",
    }
}

fn snippet(client: McpClient, gateway: &str, name: &str) -> String {
    let url = format!("{gateway}/mcp");
    match client {
        // Single quotes: the shell must not expand the variable, or the
        // token itself would be written into the config. `claude mcp add`
        // stores the header as typed; Claude Code expands `${VAR}` (not
        // `$VAR`) in a project's .mcp.json when it connects.
        McpClient::ClaudeCode => format!(
            "claude mcp add --scope project --transport http {name} {url} --header 'Authorization: Bearer ${{PORTCULLIS_TOKEN}}'\n"
        ),
        // Cursor interpolates ${env:NAME} in mcp.json.
        McpClient::Cursor => {
            let v = serde_json::json!({
                "mcpServers": {
                    name: {
                        "url": url,
                        "headers": {"Authorization": "Bearer ${env:PORTCULLIS_TOKEN}"}
                    }
                }
            });
            format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        // Codex reads the bearer token from the named variable.
        McpClient::Codex => format!(
            "[mcp_servers.{name}]\nurl = \"{url}\"\nbearer_token_env_var = \"PORTCULLIS_TOKEN\"\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets() {
        let g = "https://gw.example.com:8443";
        let claude = snippet(McpClient::ClaudeCode, g, "portcullis");
        assert_eq!(
            claude,
            "claude mcp add --scope project --transport http portcullis https://gw.example.com:8443/mcp --header 'Authorization: Bearer ${PORTCULLIS_TOKEN}'\n"
        );
        // What a shell runs it as: the variable reaches claude unexpanded,
        // so no token is written into its config.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s\\n' {}",
                claude.trim_start_matches("claude ")
            ))
            .env("PORTCULLIS_TOKEN", "pc_CANARY")
            .output()
            .unwrap();
        let argv = String::from_utf8_lossy(&out.stdout);
        assert!(
            argv.contains("Authorization: Bearer ${PORTCULLIS_TOKEN}"),
            "{argv}"
        );
        assert!(!argv.contains("pc_CANARY"), "{argv}");
        assert_eq!(ca_variable(McpClient::Codex), "CODEX_CA_CERTIFICATE");
        let v: serde_json::Value =
            serde_json::from_str(&snippet(McpClient::Cursor, g, "pc")).unwrap();
        assert_eq!(
            v["mcpServers"]["pc"]["url"],
            "https://gw.example.com:8443/mcp"
        );
        let oauth = oauth_snippet(McpClient::ClaudeCode, g, "portcullis");
        assert_eq!(
            oauth,
            "claude mcp add --scope project --transport http portcullis https://gw.example.com:8443/mcp\n"
        );
        for c in [McpClient::ClaudeCode, McpClient::Cursor, McpClient::Codex] {
            let s = oauth_snippet(c, g, "pc");
            assert!(!s.contains("Authorization") && !s.contains("TOKEN"), "{s}");
        }
        let codex = snippet(McpClient::Codex, g, "pc");
        assert!(codex.starts_with("[mcp_servers.pc]\nurl = \"https://gw.example.com:8443/mcp\""));
    }
}
