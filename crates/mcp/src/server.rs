//! The rmcp handler: tool list and dispatch. The caller comes from the
//! HTTP request's extensions (put there by the gateway after it
//! authenticated the request); a request without one is refused.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::tools::{self, ToolError};
use crate::{Caller, Context};

#[derive(Clone)]
pub struct McpServer {
    ctx: Arc<Context>,
}

impl McpServer {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

fn caller(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::invalid_request("unauthenticated", None))
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("portcullis", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Portcullis gives access to the databases and APIs you have been granted. \
                 Start with list_connections; use describe_schema before writing SQL. \
                 Results are masked and every call is recorded and audited.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::definitions()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let mut who = caller(&context)?;
        // rmcp cancels this token when the POST that carries the call
        // goes away (its response dropped: the client closed or reset
        // it), and runs the handler on a task of its own, which nothing
        // else stops.
        who.gone = context.ct.clone();
        let args = serde_json::Value::Object(request.arguments.unwrap_or_default());
        let result = tools::call(&self.ctx, &who, &request.name, args).await;
        match result {
            Ok(r) => Ok(r.into()),
            // Unknown tool or malformed arguments: a protocol error.
            Err(ToolError::Params(m)) => Err(ErrorData::invalid_params(m, None)),
            // Everything else is the tool's answer, flagged as an error so
            // the model sees why (denied, refused statement, target down).
            Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(e.to_string())]).into()),
        }
    }
}
