//! Where a reversible token may be swapped back for its value in a
//! statement: only as a whole plain string literal compared with a column
//! (`email = '[EMAIL:…]'`, `email IN ('[EMAIL:…]', …)`), so that the value
//! can select rows but never be read back.
//!
//! A review found the swap made anywhere in the text let the caller read
//! the value through an expression of its own (`select
//! reverse('[EMAIL:…]')`, a column alias, `set application_name`), and let
//! a value holding `$$`, `"`, a backslash or a newline break out of a
//! dollar-quoted string, an identifier, an `E''` string or a comment: the
//! statement the target ran was not the one the gateway had proven (a DDL
//! statement ran where approvals held DDL). A comparison with a column
//! tells the caller no more than a predicate on that column, which its
//! grant already allows; a plain literal keeps its place in the statement
//! whatever its content once quotes are doubled, since values holding a
//! backslash (an escape where `standard_conforming_strings` is off) are
//! never swapped.

use std::ops::ControlFlow;

use sqlparser::ast::{BinaryOperator, Expr, InTarget, Value, visit_expressions};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Whether every one of the `occurrences` tokens (`is_token`) in `sql` is
/// a whole plain literal compared with a column. A statement that does not
/// parse, or holds a token anywhere else (in another literal, a comment,
/// an identifier, an assignment, a function's argument), is not swapped at
/// all: it goes to the target with the tokens as they are.
pub(crate) fn only_compared(
    sql: &str,
    is_token: impl Fn(&str) -> bool,
    occurrences: usize,
) -> bool {
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return false;
    };
    let token_literal = |e: &Expr| match e {
        Expr::Value(v) => matches!(&v.value, Value::SingleQuotedString(s) if is_token(s)),
        _ => false,
    };
    let column = |e: &Expr| matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
    let mut compared = 0usize;
    let _ = visit_expressions(&statements, |e| {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq | BinaryOperator::NotEq,
                right,
            } => {
                let pair = (
                    column(left),
                    token_literal(left),
                    column(right),
                    token_literal(right),
                );
                if matches!(pair, (true, _, _, true) | (_, true, true, _)) {
                    compared += 1;
                }
            }
            Expr::In {
                expr,
                target: InTarget::List(list),
                ..
            } if column(expr) => {
                compared += list.iter().filter(|i| token_literal(i)).count();
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    occurrences > 0 && compared == occurrences
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "[EMAIL:105f56eb5dcb2170]";

    fn ok(sql: &str) -> bool {
        let n = sql.matches(T).count();
        only_compared(sql, |s| s == T, n)
    }

    #[test]
    fn a_token_compared_with_a_column_is_swapped() {
        for sql in [
            format!("select id from people where email = '{T}'"),
            format!("select id from people p where '{T}' <> p.email"),
            format!("select id from people where email in ('{T}', 'x@y.z')"),
            format!("update people set name = 'x' where email = '{T}'"),
            format!("delete from people where email = '{T}' or email = '{T}'"),
            format!("select 1; select id from people where email = '{T}'"),
            format!("select email = '{T}' from people"),
        ] {
            assert!(ok(&sql), "{sql}");
        }
    }

    /// Every place the review used to read or inject the value.
    #[test]
    fn a_token_anywhere_else_is_not() {
        for sql in [
            format!("select '{T}'"),
            format!("select reverse('{T}')"),
            format!("select md5('{T}')"),
            format!("select length('{T}')"),
            format!("select '{T}' = 'erin@example.com'"),
            format!("select 1 as \"{T}\""),
            format!("set application_name = '{T}'"),
            format!("select $${T}$$"),
            format!("select E'{T}'"),
            format!("select 1 -- {T}"),
            format!("select 1 /* {T} */"),
            format!("update people set email = '{T}' where id = 7"),
            format!("insert into people (email) values ('{T}')"),
            format!("select id from people where lower(email) = '{T}'"),
            format!("select id from people where email = '{T}'::text"),
            format!("select id from people where email = '{T} '"),
            format!("select id from people where email = '{T}' and reverse('{T}') = 'x'"),
            format!("select id from people where email = '{T}{T}'"),
            format!("select id from people where email in (select '{T}')"),
            format!("do $$ begin perform 1 where 'a' = '{T}'; end $$"),
            format!("select id from people where email = '{T}"),
            "select 1".to_string(),
        ] {
            assert!(!ok(&sql), "{sql}");
        }
    }
}
