//! The tools: their definitions (precise JSON schemas, written out rather
//! than derived, so what the model reads is exactly what is enforced) and
//! the dispatcher. Each tool lives in its own file; the checks every call
//! goes through are in [`crate::call`].

use std::sync::Arc;

use rmcp::model::{CallToolResult, JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

pub use crate::call::ToolError;
#[cfg(test)]
pub use crate::call::int_arg;
use crate::{Caller, Context};

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(JsonObject::new()),
    }
}

pub const MAX_ROWS_LIMIT: u64 = 1000;
pub const DEFAULT_ROWS: u64 = 100;
pub const MAX_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

pub fn definitions() -> Vec<Tool> {
    let read_only = |title: &str| {
        let mut a = ToolAnnotations::with_title(title);
        a.read_only_hint = Some(true);
        a
    };
    vec![
        Tool::new(
            "list_connections",
            "List the connections you may use: name, type (postgres or http) and access \
             mode (read-only or read-write).",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        )
        .with_annotations(read_only("List connections")),
        Tool::new(
            "sql_query",
            "Run one SQL statement on a PostgreSQL connection. Results are masked (personal \
             data and secrets replaced) and limited to max_rows rows. On a read-only \
             connection only reading statements are allowed.",
            schema(json!({
                "type": "object",
                "properties": {
                    "connection": {"type": "string", "description": "A postgres connection from list_connections"},
                    "sql": {"type": "string", "minLength": 1, "maxLength": 100000, "description": "Exactly one SQL statement"},
                    "max_rows": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS_LIMIT, "default": DEFAULT_ROWS},
                    "timeout_ms": {"type": "integer", "minimum": 100, "maximum": MAX_TIMEOUT_MS, "default": DEFAULT_TIMEOUT_MS}
                },
                "required": ["connection", "sql"],
                "additionalProperties": false
            })),
        )
        .with_title("Run SQL"),
        Tool::new(
            "http_request",
            "Call an HTTP API connection. The gateway adds the API's credential; the response \
             body is masked.",
            schema(json!({
                "type": "object",
                "properties": {
                    "connection": {"type": "string", "description": "An http connection from list_connections"},
                    "method": {"type": "string", "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], "default": "GET"},
                    "path": {"type": "string", "pattern": "^/", "description": "Path under the connection's base URL, e.g. /customers"},
                    "query": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                    "body": {"description": "A JSON request body"}
                },
                "required": ["connection", "path"],
                "additionalProperties": false
            })),
        )
        .with_title("Call an API"),
        Tool::new(
            "describe_schema",
            "Tables and columns (name, type, nullable) of a PostgreSQL connection, to plan \
             queries.",
            schema(json!({
                "type": "object",
                "properties": {
                    "connection": {"type": "string"},
                    "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "description": "Only this schema (default: all but the system ones)"}
                },
                "required": ["connection"],
                "additionalProperties": false
            })),
        )
        .with_annotations(read_only("Describe schema")),
    ]
}

pub async fn call(
    ctx: &Context,
    who: &Caller,
    name: &str,
    args: Value,
) -> Result<CallToolResult, ToolError> {
    match name {
        "list_connections" => Ok(crate::list::list_connections(ctx, who)),
        "sql_query" => crate::sql::sql_query(ctx, who, &args).await,
        "describe_schema" => crate::schema::describe_schema(ctx, who, &args).await,
        "http_request" => crate::web::http_request(ctx, who, &args).await,
        other => Err(ToolError::Params(format!("unknown tool {other:?}"))),
    }
}
