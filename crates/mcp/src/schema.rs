//! `describe_schema`: tables and columns of a PostgreSQL connection, read
//! from `information_schema` through the same path as `sql_query`.

use portcullis_config::Protocol;
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Value, json};

use crate::call::{self, ToolError, str_arg};
use crate::sql::{Query, run};
use crate::{Caller, Context, Kind};

pub async fn describe_schema(
    ctx: &Context,
    who: &Caller,
    args: &Value,
) -> Result<CallToolResult, ToolError> {
    let name = str_arg(args, "connection")?;
    let filter = match args.get("schema").and_then(Value::as_str) {
        None => "table_schema NOT IN ('pg_catalog', 'information_schema')".to_string(),
        Some(s)
            if !s.is_empty()
                && s.len() <= 63
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            // Checked to be an identifier above: safe to quote as a literal.
            format!("table_schema = '{s}'")
        }
        Some(_) => return Err(ToolError::Params("schema must be an identifier".into())),
    };
    let (conn, admitted) = call::admit(ctx, who, name, Protocol::Postgres).await?;
    let Kind::Postgres { upstream, .. } = &conn.kind else {
        unreachable!("admit checked the protocol")
    };
    let sql = format!(
        "SELECT table_schema, table_name, column_name, data_type, is_nullable \
         FROM information_schema.columns WHERE {filter} \
         ORDER BY table_schema, table_name, ordinal_position"
    );
    call::budget(ctx, who, &admitted, "describe_schema").await?;
    let query = Query {
        sql: &sql,
        max_rows: 5000,
        timeout_ms: 10_000,
    };
    run(ctx, who, &admitted, upstream, query, |_, rows| {
        let mut tables: Vec<Value> = Vec::new();
        let mut text = String::new();
        for r in &rows {
            let cell = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            let (schema, table) = (cell(0), cell(1));
            let same = tables
                .last()
                .is_some_and(|t| t["schema"] == schema.as_str() && t["table"] == table.as_str());
            if !same {
                text.push_str(&format!("{schema}.{table}\n"));
                tables.push(json!({"schema": schema, "table": table, "columns": []}));
            }
            let column = json!({"name": cell(2), "type": cell(3), "nullable": cell(4) == "YES"});
            text.push_str(&format!(
                "  {} {}{}\n",
                cell(2),
                cell(3),
                if cell(4) == "YES" { "" } else { " not null" }
            ));
            if let Some(Value::Array(cols)) = tables.last_mut().map(|t| &mut t["columns"]) {
                cols.push(column);
            }
        }
        let mut r = CallToolResult::structured(json!({ "tables": tables }));
        r.content = vec![ContentBlock::text(if text.is_empty() {
            "no tables".to_string()
        } else {
            text
        })];
        r
    })
    .await
}
