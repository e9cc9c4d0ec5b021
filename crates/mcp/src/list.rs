//! `list_connections`: the connections the caller is granted, with their
//! protocol and access mode.

use portcullis_policy::Decision;
use rmcp::model::CallToolResult;
use serde_json::json;

use crate::{Caller, Context};

pub fn list_connections(ctx: &Context, who: &Caller) -> CallToolResult {
    let mut out = Vec::new();
    for c in &ctx.connections {
        if let Decision::Allow { rule, .. } = ctx.front.policy.decide(&who.principal, &c.name) {
            out.push(json!({
                "name": c.name,
                "type": c.kind.protocol().as_str(),
                "access": c.kind.access(),
                "grant": rule,
            }));
        }
    }
    let text = if out.is_empty() {
        format!("{} has no grants on any connection.", who.principal.subject)
    } else {
        out.iter()
            .map(|c| format!("{} ({}, {})", c["name"], c["type"], c["access"]).replace('"', ""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut r = CallToolResult::structured(json!({ "connections": out }));
    r.content = vec![rmcp::model::ContentBlock::text(text)];
    r
}
