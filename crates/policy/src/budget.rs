//! Budgets: what a grant lets its principals take, per session and per
//! rolling window. Pure: the limits, which apply to an action, and what
//! is left; the counting is the store's and the fronts'.

use serde::Serialize;

/// What a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Rows returned by PostgreSQL.
    Rows,
    /// Bytes returned: PostgreSQL rows (DataRow, COPY TO), HTTP response
    /// bodies as the caller receives them, MCP tool results as sent.
    Bytes,
    /// SQL statements that write (insert, update, delete, merge, copy in,
    /// or anything not proven a read).
    Writes,
    /// HTTP requests (optionally of one method).
    Requests,
    /// MCP tool calls (optionally of one tool).
    ToolCalls,
    /// Distinct tables (relations) a SQL statement names.
    Tables,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Rows => "rows",
            Measure::Bytes => "bytes",
            Measure::Writes => "writes",
            Measure::Requests => "requests",
            Measure::ToolCalls => "tool_calls",
            Measure::Tables => "tables",
        }
    }
}

/// Over how long a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// One session (a PostgreSQL connection, an HTTP connection, one
    /// MCP call): never resets; a new session starts from zero.
    Session,
    /// The last 60 minutes, counted by the minute.
    Hour,
    /// The last 24 hours, counted by the minute.
    Day,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Session => "session",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    /// Minutes counted, for the rolling windows.
    pub fn minutes(self) -> Option<i64> {
        match self {
            Window::Session => None,
            Window::Hour => Some(60),
            Window::Day => Some(24 * 60),
        }
    }
}

/// One limit of a grant's budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub measure: Measure,
    pub per: Window,
    pub limit: u64,
    /// Only this HTTP method (requests) or tool (tool calls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only: Option<String>,
}

impl Limit {
    /// The counter this limit reads: the measure, and the method or tool
    /// it is for. Every action is counted under its measure *and* its
    /// qualifier, so a limit on all requests and one on DELETE both see a
    /// DELETE.
    pub fn counter(&self) -> String {
        counter(self.measure, self.only.as_deref())
    }

    /// Whether an action of `measure` (a request of `qualifier`, …)
    /// counts against this limit.
    pub fn applies(&self, measure: Measure, qualifier: Option<&str>) -> bool {
        self.measure == measure
            && match (&self.only, qualifier) {
                (None, _) => true,
                (Some(o), Some(q)) => o.eq_ignore_ascii_case(q),
                (Some(_), None) => false,
            }
    }

    /// "rows per hour", "DELETE requests per day".
    pub fn describe(&self) -> String {
        let what = match (&self.only, self.measure) {
            (Some(m), Measure::Requests) => format!("{m} requests"),
            (Some(t), Measure::ToolCalls) => format!("calls of tool {t}"),
            (_, Measure::Tables) => "distinct tables".to_string(),
            (_, m) => m.as_str().replace('_', " "),
        };
        format!("{what} per {}", self.per.as_str())
    }
}

/// The counter name for `measure` with `qualifier` (methods upper-cased).
pub fn counter(measure: Measure, qualifier: Option<&str>) -> String {
    match qualifier {
        None => measure.as_str().to_string(),
        Some(q) if measure == Measure::Requests => {
            format!("{}:{}", measure.as_str(), q.to_ascii_uppercase())
        }
        Some(q) => format!("{}:{q}", measure.as_str()),
    }
}

/// The tightest of `limits` that applies to an action of `measure`
/// (`qualifier`), with what is left of it given what each has used:
/// `None` when no limit applies.
pub fn tightest<'a>(
    limits: &'a [Limit],
    measure: Measure,
    qualifier: Option<&str>,
    used: impl Fn(&Limit) -> u64,
) -> Option<(&'a Limit, u64, u64)> {
    limits
        .iter()
        .filter(|l| l.applies(measure, qualifier))
        .map(|l| {
            let u = used(l);
            (l, u, l.limit.saturating_sub(u))
        })
        .min_by_key(|(_, _, left)| *left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(measure: Measure, per: Window, limit: u64, only: Option<&str>) -> Limit {
        Limit {
            measure,
            per,
            limit,
            only: only.map(str::to_string),
        }
    }

    #[test]
    fn a_limit_for_one_method_sees_only_that_method() {
        let all = limit(Measure::Requests, Window::Hour, 100, None);
        let delete = limit(Measure::Requests, Window::Hour, 2, Some("DELETE"));
        assert!(all.applies(Measure::Requests, Some("GET")));
        assert!(delete.applies(Measure::Requests, Some("delete")));
        assert!(!delete.applies(Measure::Requests, Some("GET")));
        assert!(!delete.applies(Measure::ToolCalls, Some("DELETE")));
        assert_eq!(delete.counter(), "requests:DELETE");
        assert_eq!(
            counter(Measure::Requests, Some("delete")),
            "requests:DELETE"
        );
        assert_eq!(all.counter(), "requests");
    }

    #[test]
    fn the_tightest_limit_decides() {
        let limits = [
            limit(Measure::Rows, Window::Hour, 100, None),
            limit(Measure::Rows, Window::Session, 10, None),
            limit(Measure::Bytes, Window::Hour, 1, None),
        ];
        let (l, used, left) = tightest(&limits, Measure::Rows, None, |l| match l.per {
            Window::Session => 4,
            _ => 95,
        })
        .unwrap();
        assert_eq!((l.per, used, left), (Window::Hour, 95, 5));
        assert!(tightest(&limits, Measure::Writes, None, |_| 0).is_none());
    }

    #[test]
    fn descriptions_read_as_words() {
        assert_eq!(
            limit(Measure::ToolCalls, Window::Day, 1, Some("sql_query")).describe(),
            "calls of tool sql_query per day"
        );
        assert_eq!(
            limit(Measure::Requests, Window::Hour, 1, Some("DELETE")).describe(),
            "DELETE requests per hour"
        );
        assert_eq!(
            limit(Measure::ToolCalls, Window::Session, 1, None).describe(),
            "tool calls per session"
        );
    }
}
