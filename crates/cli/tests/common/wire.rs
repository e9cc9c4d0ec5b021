//! A raw PostgreSQL wire client over TLS, for tests that send what a
//! driver would not (a FunctionCall, an Execute with no Sync after it):
//! messages in, every answer out.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type Answer = (u8, Vec<u8>);

pub struct Wire {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl Wire {
    /// Log in to `database` on the gateway's PostgreSQL port as `agent`
    /// with `token` (direct TLS, ALPN `postgresql`).
    pub async fn login(port: u16, ca: &Path, database: &str, token: &str) -> Wire {
        Self::login_with(port, ca, database, token, &[]).await
    }

    /// [`Self::login`] with more startup parameters (as drivers send
    /// `search_path` or `extra_float_digits`).
    pub async fn login_with(
        port: u16,
        ca: &Path,
        database: &str,
        token: &str,
        extra: &[(&str, &str)],
    ) -> Wire {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(super::client_tls(ca, &[b"postgresql"]));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let mut w = Wire { tls };
        let mut params = format!("user\0agent\0database\0{database}\0");
        for (k, v) in extra {
            params.push_str(&format!("{k}\0{v}\0"));
        }
        params.push('\0');
        let mut startup = ((8 + params.len()) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(&196608u32.to_be_bytes());
        startup.extend_from_slice(params.as_bytes());
        w.tls.write_all(&startup).await.unwrap();
        let login = w.until_ready(Some(token)).await;
        assert!(login.iter().any(|(t, _)| *t == b'Z'), "{login:?}");
        w
    }

    /// Send one message.
    pub async fn send(&mut self, tag: u8, body: &[u8]) {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        self.tls.write_all(&m).await.unwrap();
    }

    pub async fn parse(&mut self, name: &str, sql: &str) {
        self.send(
            b'P',
            &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
        )
        .await;
    }

    /// Bind statement `name` to the unnamed portal, no parameters.
    pub async fn bind(&mut self, name: &str) {
        self.send(b'B', &[b"\0", name.as_bytes(), b"\0\0\0\0\0\0\0"].concat())
            .await;
    }

    pub async fn execute(&mut self) {
        self.send(b'E', b"\0\0\0\0\0").await;
    }

    pub async fn flush(&mut self) {
        self.send(b'H', b"").await;
    }

    pub async fn sync(&mut self) {
        self.send(b'S', b"").await;
    }

    pub async fn query(&mut self, sql: &str) {
        self.send(b'Q', &[sql.as_bytes(), b"\0"].concat()).await;
    }

    /// The first column of the first row `sql` answers, as text.
    pub async fn value(&mut self, sql: &str) -> String {
        self.query(sql).await;
        let answers = self.until(b'Z').await;
        let (_, row) = answers
            .iter()
            .find(|(t, _)| *t == b'D')
            .unwrap_or_else(|| panic!("no row for {sql:?}: {answers:?}"));
        let len = i32::from_be_bytes([row[2], row[3], row[4], row[5]]);
        String::from_utf8_lossy(&row[6..6 + len as usize]).into_owned()
    }

    /// Say goodbye (Terminate) and close, without reading what is still
    /// on its way.
    pub async fn terminate(mut self) {
        self.send(b'X', b"").await;
        let _ = self.tls.shutdown().await;
    }

    /// A simple query and its answers, up to ReadyForQuery.
    pub async fn ask(&mut self, sql: &str) -> Vec<Answer> {
        self.query(sql).await;
        self.until(b'Z').await
    }

    /// Answers up to and including the first of tag `last`.
    pub async fn until(&mut self, last: u8) -> Vec<Answer> {
        let mut out = Vec::new();
        loop {
            let a = self.next(&out).await;
            let done = a.0 == last;
            out.push(a);
            if done {
                return out;
            }
        }
    }

    /// Answers up to and including the first of any of `last`.
    pub async fn until_any(&mut self, last: &[u8]) -> Vec<Answer> {
        let mut out = Vec::new();
        loop {
            let a = self.next(&out).await;
            let done = last.contains(&a.0);
            out.push(a);
            if done {
                return out;
            }
        }
    }

    /// Answers up to ReadyForQuery (or a first error, at login, where
    /// `password` is given),
    /// answering a password request with `password`.
    pub async fn until_ready(&mut self, password: Option<&str>) -> Vec<Answer> {
        let mut out = Vec::new();
        loop {
            let (tag, body) = self.next(&out).await;
            if tag == b'R'
                && body == [0, 0, 0, 3]
                && let Some(p) = password
            {
                self.send(b'p', &[p.as_bytes(), b"\0"].concat()).await;
            }
            out.push((tag, body));
            // A refused login ends with its error alone.
            if tag == b'Z' || (tag == b'E' && password.is_some() && out.len() == 1) {
                return out;
            }
        }
    }

    async fn next(&mut self, so_far: &[Answer]) -> Answer {
        let mut head = [0u8; 5];
        match tokio::time::timeout(Duration::from_secs(20), self.tls.read_exact(&mut head)).await {
            Err(_) => panic!("no answer; so far {so_far:?}"),
            Ok(Err(e)) => panic!("the session ended ({e}); so far {so_far:?}"),
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
        let mut body = vec![0u8; len];
        self.tls.read_exact(&mut body).await.unwrap();
        (head[0], body)
    }
}

/// The bodies of the answers of tag `tag`, as text.
pub fn texts(answers: &[Answer], tag: u8) -> Vec<String> {
    answers
        .iter()
        .filter(|(t, _)| *t == tag)
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect()
}

/// The text of the first error among `answers`.
pub fn error_of(answers: &[Answer]) -> String {
    answers
        .iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, b)| String::from_utf8_lossy(b).replace('\0', " "))
        .unwrap_or_else(|| format!("no error in {answers:?}"))
}
