//! Masking result rows. The inspector follows the protocol to know each
//! row's layout (column names, types, text or binary), masks DataRow cells
//! and COPY-out lines, and keeps every frame valid. A row whose layout it
//! cannot know is not passed: the session ends (fail closed).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use portcullis_mask::{Cell, Rule, Stats, Vault};

use crate::frame::{Message, tag, take_cstr};
use crate::inspect::{Inspector, Refusal, Verdict};
use crate::messages::sqlstate;

#[derive(Debug, Clone)]
struct Col {
    name: String,
    table_oid: u32,
    type_oid: u32,
    format: i16,
}

/// What the target will answer next, in order.
#[derive(Debug)]
enum Expect {
    Query,
    DescribeStatement(String),
    DescribePortal(String),
    Execute {
        statement: String,
        formats: Vec<i16>,
    },
    Sync,
}

pub struct MaskInspector {
    rule: Arc<Rule>,
    connection: String,
    expect: VecDeque<Expect>,
    statements: HashMap<String, Vec<Col>>,
    portals: HashMap<String, (String, Vec<i16>)>,
    current: Option<Vec<Col>>,
    copy_binary: bool,
    pub stats: Stats,
    metrics: Option<portcullis_mask::MaskMetrics>,
    /// Reversible tokens this session was shown.
    vault: Vault,
    /// Table names by OID, for `table.column` rules.
    tables: HashMap<u32, String>,
}

impl MaskInspector {
    /// Count findings into `metrics` at every ReadyForQuery.
    pub fn with_metrics(mut self, metrics: portcullis_mask::MaskMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn new(rule: Arc<Rule>, connection: &str) -> Self {
        Self {
            rule,
            connection: connection.to_string(),
            expect: VecDeque::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            current: None,
            copy_binary: false,
            stats: Stats::new(),
            metrics: None,
            vault: Vault::default(),
            tables: HashMap::new(),
        }
    }

    /// Table names by OID (looked up by the session when the rule has
    /// `table.column` rules).
    pub fn with_tables(mut self, tables: HashMap<u32, String>) -> Self {
        self.tables = tables;
        self
    }

    fn refuse(&self, why: &str) -> Verdict {
        Verdict::Refuse(Refusal {
            code: sqlstate::CONNECTION_FAILURE,
            message: format!(
                "portcullis: connection \"{}\": results cannot be masked ({why}); the session is closed (rule {:?})",
                self.connection, self.rule.name
            ),
        })
    }

    /// The layout for the next DataRow.
    fn layout(&mut self) -> Option<Vec<Col>> {
        if let Some(c) = &self.current {
            return Some(c.clone());
        }
        if let Some(Expect::Execute { statement, formats }) = self.expect.front() {
            let cols = self.statements.get(statement)?;
            let cols: Vec<Col> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| Col {
                    format: match formats.len() {
                        0 => 0,
                        1 => formats[0],
                        _ => formats.get(i).copied().unwrap_or(0),
                    },
                    ..c.clone()
                })
                .collect();
            self.current = Some(cols.clone());
            return Some(cols);
        }
        None
    }

    fn mask_row(&mut self, body: &[u8], cols: &[Col]) -> Result<Option<Message>, &'static str> {
        let mut b = body;
        let n = read_i16(&mut b).ok_or("truncated DataRow")? as usize;
        if n != cols.len() {
            return Err("DataRow does not match its RowDescription");
        }
        let mut out = BytesMut::with_capacity(body.len() + 16);
        out.put_i16(n as i16);
        let mut changed = false;
        for col in cols {
            let len = read_i32(&mut b).ok_or("truncated DataRow")?;
            if len < 0 {
                out.put_i32(-1);
                continue;
            }
            let len = len as usize;
            if b.len() < len {
                return Err("truncated DataRow");
            }
            let (value, rest) = b.split_at(len);
            b = rest;
            match self.mask_value(col, value)? {
                None => {
                    out.put_i32(len as i32);
                    out.put_slice(value);
                }
                Some(Cell::Null) => {
                    changed = true;
                    out.put_i32(-1);
                }
                Some(Cell::Replace(s)) => {
                    changed = true;
                    let bytes = if col.format == 1 && col.type_oid == JSONB {
                        let mut v = vec![1u8];
                        v.extend_from_slice(s.as_bytes());
                        v
                    } else {
                        s.into_bytes()
                    };
                    out.put_i32(bytes.len() as i32);
                    out.put_slice(&bytes);
                }
                Some(Cell::Keep) => {
                    out.put_i32(len as i32);
                    out.put_slice(value);
                }
            }
        }
        Ok(changed.then(|| Message::new(tag::DATA_ROW, out.freeze())))
    }

    /// `None`: leave the bytes as they are.
    fn mask_value(&mut self, col: &Col, value: &[u8]) -> Result<Option<Cell>, &'static str> {
        let m = &self.rule.masker;
        let vault = &mut Some(&mut self.vault);
        let table = self.tables.get(&col.table_oid).map(String::as_str);
        let text: Option<String> = if col.format == 0 {
            Some(String::from_utf8(value.to_vec()).map_err(|_| "a text cell is not UTF-8")?)
        } else {
            match col.type_oid {
                TEXT | VARCHAR | BPCHAR | NAME | JSON | XML | UNKNOWN => Some(
                    String::from_utf8(value.to_vec()).map_err(|_| "a text cell is not UTF-8")?,
                ),
                JSONB => Some(
                    String::from_utf8(value.get(1..).unwrap_or_default().to_vec())
                        .map_err(|_| "a jsonb cell is not UTF-8")?,
                ),
                INT8 | INT4 | INT2 => {
                    // A number can be a card or phone number; a binary
                    // integer cannot hold a mask, so a hit becomes NULL.
                    let n = match value.len() {
                        8 => i64::from_be_bytes(value.try_into().unwrap_or_default()),
                        4 => i32::from_be_bytes(value.try_into().unwrap_or_default()) as i64,
                        2 => i16::from_be_bytes(value.try_into().unwrap_or_default()) as i64,
                        _ => return Err("a binary integer cell has a bad length"),
                    };
                    return Ok(
                        match m.mask_cell(&col.name, table, &n.to_string(), &mut self.stats) {
                            Cell::Keep => None,
                            _ => Some(Cell::Null),
                        },
                    );
                }
                // Other binary types (bool, floats, dates, uuid, bytea…)
                // hold no text to find; a column rule still applies.
                _ => {
                    return Ok(match m.mask_cell(&col.name, table, "", &mut Stats::new()) {
                        Cell::Keep => None,
                        _ => {
                            *self
                                .stats
                                .entry(format!("column:{}", col.name.to_ascii_lowercase()))
                                .or_default() += 1;
                            Some(Cell::Null)
                        }
                    });
                }
            }
        };
        let text = text.unwrap_or_default();
        Ok(
            match m.mask_cell_in(&col.name, table, &text, &mut self.stats, vault) {
                Cell::Keep => None,
                other => Some(other),
            },
        )
    }

    /// Pop expectations up to and including the next sync point.
    fn end_of_cycle(&mut self) {
        while let Some(e) = self.expect.pop_front() {
            if matches!(e, Expect::Sync | Expect::Query) {
                break;
            }
        }
        self.current = None;
    }
}

const TEXT: u32 = 25;
const VARCHAR: u32 = 1043;
const BPCHAR: u32 = 1042;
const NAME: u32 = 19;
const JSON: u32 = 114;
const JSONB: u32 = 3802;
const XML: u32 = 142;
const UNKNOWN: u32 = 705;
const INT8: u32 = 20;
const INT4: u32 = 23;
const INT2: u32 = 21;

fn read_i16(b: &mut &[u8]) -> Option<i16> {
    let (h, t) = b.split_first_chunk::<2>()?;
    *b = t;
    Some(i16::from_be_bytes(*h))
}

fn read_i32(b: &mut &[u8]) -> Option<i32> {
    let (h, t) = b.split_first_chunk::<4>()?;
    *b = t;
    Some(i32::from_be_bytes(*h))
}

fn read_u32(b: &mut &[u8]) -> Option<u32> {
    read_i32(b).map(|v| v as u32)
}

fn row_description(body: &[u8]) -> Option<Vec<Col>> {
    let mut b = body;
    let n = read_i16(&mut b)?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let name = take_cstr(&mut b)?;
        let table_oid = read_u32(&mut b)?;
        let _attnum = read_i16(&mut b)?;
        let type_oid = read_u32(&mut b)?;
        let _typlen = read_i16(&mut b)?;
        let _typmod = read_i32(&mut b)?;
        let format = read_i16(&mut b)?;
        cols.push(Col {
            name,
            table_oid,
            type_oid,
            format,
        });
    }
    Some(cols)
}

impl MaskInspector {
    /// A statement with the session's reversible tokens swapped back for
    /// their originals (as SQL string content: quotes doubled).
    fn reverse(&self, msg: &Message) -> Option<Message> {
        if self.vault.is_empty() {
            return None;
        }
        let sql_literal = |o: &str| o.replace('\'', "''");
        match msg.tag {
            tag::QUERY => {
                let sql = crate::messages::query_text(msg)?;
                Some(crate::messages::query(
                    &self.vault.reverse(&sql, sql_literal)?,
                ))
            }
            tag::PARSE => {
                let mut b = &msg.body[..];
                let name = take_cstr(&mut b)?;
                let sql = take_cstr(&mut b)?;
                let new = self.vault.reverse(&sql, sql_literal)?;
                // Keep the parameter types that follow the SQL.
                let mut out = BytesMut::with_capacity(msg.body.len() + 64);
                out.put_slice(name.as_bytes());
                out.put_u8(0);
                out.put_slice(new.as_bytes());
                out.put_u8(0);
                out.put_slice(b);
                Some(Message::new(tag::PARSE, out.freeze()))
            }
            _ => None,
        }
    }
}

impl Inspector for MaskInspector {
    fn frontend(&mut self, msg: &Message) -> Verdict {
        if let Some(rewritten) = self.reverse(msg) {
            let _ = self.frontend(&rewritten);
            return Verdict::Rewrite(rewritten);
        }
        let mut b = &msg.body[..];
        match msg.tag {
            tag::QUERY => self.expect.push_back(Expect::Query),
            tag::SYNC => self.expect.push_back(Expect::Sync),
            tag::PARSE => {
                if let Some(name) = take_cstr(&mut b) {
                    self.statements.remove(&name);
                }
            }
            tag::BIND => match crate::messages::bind(&msg.body) {
                Some(bind) => {
                    self.portals
                        .insert(bind.portal, (bind.statement, bind.result_formats));
                }
                None => return self.refuse("a Bind message could not be read"),
            },
            tag::DESCRIBE => {
                let kind = b.first().copied();
                b = b.get(1..).unwrap_or_default();
                let name = take_cstr(&mut b).unwrap_or_default();
                match kind {
                    Some(b'S') => self.expect.push_back(Expect::DescribeStatement(name)),
                    Some(b'P') => {
                        let stmt = self
                            .portals
                            .get(&name)
                            .map(|p| p.0.clone())
                            .unwrap_or_default();
                        self.expect.push_back(Expect::DescribePortal(stmt));
                    }
                    _ => {}
                }
            }
            tag::EXECUTE => {
                let portal = take_cstr(&mut b).unwrap_or_default();
                let (statement, formats) = self.portals.get(&portal).cloned().unwrap_or_default();
                self.expect
                    .push_back(Expect::Execute { statement, formats });
            }
            _ => {}
        }
        Verdict::Pass
    }

    fn backend(&mut self, msg: &Message) -> Verdict {
        match msg.tag {
            tag::ROW_DESCRIPTION => {
                let Some(cols) = row_description(&msg.body) else {
                    return self.refuse("a RowDescription could not be read");
                };
                match self.expect.front() {
                    Some(Expect::DescribeStatement(name)) | Some(Expect::DescribePortal(name)) => {
                        // Formats in a statement's description are not yet
                        // known; Bind says them per portal.
                        self.statements.insert(name.clone(), cols);
                        self.expect.pop_front();
                    }
                    _ => self.current = Some(cols),
                }
                Verdict::Pass
            }
            tag::NO_DATA => {
                if matches!(
                    self.expect.front(),
                    Some(Expect::DescribeStatement(_) | Expect::DescribePortal(_))
                ) {
                    self.expect.pop_front();
                }
                Verdict::Pass
            }
            tag::DATA_ROW => {
                let Some(cols) = self.layout() else {
                    return self.refuse("a row arrived whose columns are unknown");
                };
                match self.mask_row(&msg.body, &cols) {
                    Ok(Some(m)) => Verdict::Rewrite(m),
                    Ok(None) => Verdict::Pass,
                    Err(why) => self.refuse(why),
                }
            }
            tag::COMMAND_COMPLETE | tag::PORTAL_SUSPENDED | tag::EMPTY_QUERY => {
                if matches!(self.expect.front(), Some(Expect::Execute { .. })) {
                    self.expect.pop_front();
                }
                self.current = None;
                Verdict::Pass
            }
            tag::COPY_OUT_RESPONSE => {
                // CopyOutResponse: overall format 0 = text.
                self.copy_binary = msg.body.first().copied() == Some(1);
                if self.copy_binary {
                    return self.refuse("binary COPY output cannot be inspected");
                }
                Verdict::Pass
            }
            tag::COPY_DATA => {
                let Ok(text) = std::str::from_utf8(&msg.body) else {
                    return self.refuse("COPY data is not UTF-8");
                };
                match self.rule.masker.mask_str_in(
                    text,
                    &mut self.stats,
                    &mut Some(&mut self.vault),
                ) {
                    std::borrow::Cow::Borrowed(_) => Verdict::Pass,
                    std::borrow::Cow::Owned(s) => {
                        Verdict::Rewrite(Message::new(tag::COPY_DATA, s.into_bytes()))
                    }
                }
            }
            tag::ERROR_RESPONSE => {
                // After an error the target skips to the next Sync.
                while matches!(
                    self.expect.front(),
                    Some(
                        Expect::Execute { .. }
                            | Expect::DescribeStatement(_)
                            | Expect::DescribePortal(_)
                    )
                ) {
                    self.expect.pop_front();
                }
                self.current = None;
                Verdict::Pass
            }
            tag::READY_FOR_QUERY => {
                self.end_of_cycle();
                if let Some(m) = &self.metrics
                    && !self.stats.is_empty()
                {
                    m.record(&self.connection, &self.stats);
                    self.stats.clear();
                }
                Verdict::Pass
            }
            _ => Verdict::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_mask::{MaskSpec, RuleSet};

    fn inspector() -> MaskInspector {
        let rs = RuleSet::new(&[MaskSpec::default()], Some(b"k")).unwrap();
        MaskInspector::new(rs.select("db", &[]).unwrap().clone(), "db")
    }

    fn row_desc(cols: &[(&str, u32, i16)]) -> Message {
        let mut b = BytesMut::new();
        b.put_i16(cols.len() as i16);
        for (name, oid, fmt) in cols {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_u32(0);
            b.put_i16(0);
            b.put_u32(*oid);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(*fmt);
        }
        Message::new(b'T', b.freeze())
    }

    fn data_row(cells: &[Option<&[u8]>]) -> Message {
        let mut b = BytesMut::new();
        b.put_i16(cells.len() as i16);
        for c in cells {
            match c {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        Message::new(b'D', b.freeze())
    }

    #[test]
    fn simple_query_rows_are_masked_and_stay_valid() {
        let mut i = inspector();
        i.frontend(&crate::messages::query("select ..."));
        assert_eq!(
            i.backend(&row_desc(&[("id", INT4, 0), ("email", TEXT, 0)])),
            Verdict::Pass
        );
        let v = i.backend(&data_row(&[Some(b"1"), Some(b"ann@example.com")]));
        assert_eq!(
            v,
            Verdict::Rewrite(data_row(&[Some(b"1"), Some(b"[EMAIL]")]))
        );
        assert_eq!(i.backend(&data_row(&[Some(b"2"), None])), Verdict::Pass);
        assert_eq!(i.stats["email"], 1);
    }

    #[test]
    fn extended_protocol_with_binary_results() {
        let mut i = inspector();
        // Parse + Describe(S) + Sync, then Bind(binary) + Execute + Sync.
        i.frontend(&crate::messages::parse_named(
            "s1",
            "select id, email from t",
        ));
        let mut d = BytesMut::new();
        d.put_u8(b'S');
        d.put_slice(b"s1\0");
        i.frontend(&Message::new(b'D', d.freeze()));
        i.frontend(&Message::new(b'S', bytes::Bytes::new()));
        let mut bind = BytesMut::new();
        bind.put_slice(b"\0s1\0");
        bind.put_i16(0);
        bind.put_i16(0);
        bind.put_i16(1);
        bind.put_i16(1);
        i.frontend(&Message::new(b'B', bind.freeze()));
        i.frontend(&Message::new(b'E', &b"\0\0\0\0\0"[..]));
        i.frontend(&Message::new(b'S', bytes::Bytes::new()));

        i.backend(&Message::new(b'1', bytes::Bytes::new()));
        i.backend(&Message::new(b't', &b"\0\0"[..]));
        i.backend(&row_desc(&[("id", INT8, 0), ("email", VARCHAR, 0)]));
        i.backend(&crate::messages::ready_for_query(b'I'));
        i.backend(&Message::new(b'2', bytes::Bytes::new()));
        let card = 4111111111111111i64.to_be_bytes();
        let v = i.backend(&data_row(&[Some(&card), Some(b"bo@example.org")]));
        assert_eq!(v, Verdict::Rewrite(data_row(&[None, Some(b"[EMAIL]")])));
        let seven = 7i64.to_be_bytes();
        assert_eq!(i.backend(&data_row(&[Some(&seven), None])), Verdict::Pass);
    }

    #[test]
    fn unknown_layout_fails_closed() {
        let mut i = inspector();
        assert!(matches!(
            i.backend(&data_row(&[Some(b"x")])),
            Verdict::Refuse(_)
        ));
        let mut i = inspector();
        i.frontend(&crate::messages::query("copy t to stdout"));
        assert!(matches!(
            i.backend(&Message::new(b'H', &b"\x01\x00\x00"[..])),
            Verdict::Refuse(_)
        ));
        let mut i = inspector();
        i.frontend(&crate::messages::query("copy t to stdout"));
        assert_eq!(
            i.backend(&Message::new(b'H', &b"\x00\x00\x00"[..])),
            Verdict::Pass
        );
        assert_eq!(
            i.backend(&Message::new(b'd', &b"1\tann@example.com\n"[..])),
            Verdict::Rewrite(Message::new(b'd', &b"1\t[EMAIL]\n"[..]))
        );
    }
}
