//! Settings a caller addresses to the gateway itself, in the startup
//! packet's `options` the way libpq's `PGOPTIONS` sends server settings:
//! `PGOPTIONS="-c portcullis.session=30m"`. `options` is never passed to
//! the target, so these stay between the caller and the gateway.

/// The value of `-c NAME=VALUE` (or `-cNAME=VALUE`, `--NAME=VALUE`) in an
/// `options` string, split as the server splits it: on whitespace, with a
/// backslash making the next character literal.
pub fn setting(options: &str, name: &str) -> Option<String> {
    let words = split(options);
    let mut found = None;
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let assignment = if w == "-c" {
            i += 1;
            words.get(i).map(String::as_str)
        } else {
            w.strip_prefix("-c").or_else(|| w.strip_prefix("--"))
        };
        if let Some((n, v)) = assignment.and_then(|a| a.split_once('='))
            && n.eq_ignore_ascii_case(name)
        {
            // The last one wins, as for the server.
            found = Some(v.to_string());
        }
        i += 1;
    }
    found
}

fn split(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_setting_in_each_spelling() {
        let n = "portcullis.session";
        assert_eq!(
            setting("-c portcullis.session=30m", n).as_deref(),
            Some("30m")
        );
        assert_eq!(setting("-cportcullis.session=2h", n).as_deref(), Some("2h"));
        assert_eq!(
            setting("--portcullis.session=90s", n).as_deref(),
            Some("90s")
        );
        assert_eq!(
            setting("-c search_path=x  -c Portcullis.Session=1m", n).as_deref(),
            Some("1m")
        );
        assert_eq!(
            setting("-c portcullis.session=1m -c portcullis.session=2m", n).as_deref(),
            Some("2m")
        );
        assert_eq!(
            setting(r"-c portcullis.session=1\ m", n).as_deref(),
            Some("1 m")
        );
    }

    #[test]
    fn absent_or_malformed_is_none() {
        let n = "portcullis.session";
        assert_eq!(setting("", n), None);
        assert_eq!(setting("-c", n), None);
        assert_eq!(setting("-c portcullis.session", n), None);
        assert_eq!(setting("-c other=1", n), None);
        assert_eq!(setting("portcullis.session=1m", n), None);
        assert_eq!(setting("-c portcullis.sessions=1m", n), None);
    }
}
