//! The bytes of an answer read as a person would read them: escapes
//! decoded, blanks dropped, letters lower-cased; each byte of the reading
//! maps back to the bytes it was read from. The scrubber searches this
//! reading too, so a secret the target escaped character by character
//! (JSON `\u0073`, `\x73`, `&#115;`, `&#x73;`, `&sol;`, `%2F`, `%252F`,
//! quoted-printable `=3D`, soft line breaks, base64 wrapped by blanks)
//! is found whatever set of characters the target's escaper chose (a
//! re-review got the key out through ten escapers a list of spellings
//! did not name).
//!
//! Written by hand: it must keep, for each byte it reads, where the byte
//! came from, which no decoding crate reports.

/// A reading: `text[i]` was read from `hay[from[i]..to[i]]`.
#[derive(Default)]
pub(super) struct Reading {
    pub text: Vec<u8>,
    pub from: Vec<u32>,
    pub to: Vec<u32>,
    /// Whether an escape was read as a [tag character](tag).
    pub tags: bool,
    /// The grammars of the escapes read that [rewrap](rewraps), and
    /// quoted-printable's where a soft break may split one (after one):
    /// how the text is worth [decoding once](decode_once) and reading
    /// again. Found as the reading goes: a walk of its own over every
    /// escape cost 15% of an escape-heavy answer (session 13).
    pub again: Grammars,
}

/// An escaper's grammar, told by an escape's first byte: what a pass of
/// [`decode_once`] decodes. A text escaped again is decoded in the
/// grammars that ask ([`passes`]), some of them alone: decoding every
/// one at once read an HTML `&#8` before the quoted-printable soft break
/// that split `&#81;` was taken out (session 13).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Grammar {
    Backslash,
    Css,
    Percent,
    Reference,
    Printable,
}

impl Grammar {
    const ALL: [Grammar; 5] = [
        Grammar::Backslash,
        Grammar::Css,
        Grammar::Percent,
        Grammar::Reference,
        Grammar::Printable,
    ];

    /// The grammar of an escape that begins with `b`, read as CSS reads
    /// `\\` where `css`.
    fn of(b: u8, css: bool) -> Option<Self> {
        match b {
            b'\\' if css => Some(Self::Css),
            b'\\' => Some(Self::Backslash),
            b'%' => Some(Self::Percent),
            b'&' => Some(Self::Reference),
            b'=' => Some(Self::Printable),
            _ => None,
        }
    }

    fn first(self) -> u8 {
        match self {
            Self::Backslash | Self::Css => b'\\',
            Self::Percent => b'%',
            Self::Reference => b'&',
            Self::Printable => b'=',
        }
    }
}

/// How a text whose escapes in `asked` wrote the start of others is
/// decoded once: in all of them at once (an escaper writes one grammar,
/// and one text for each had let a crafted answer with decoys of every
/// grammar cost four times as much), and apart in those that must go
/// alone: quoted-printable's, whose soft breaks may split an escape of
/// another grammar that decoding it with them reads too soon (`&#8=` and
/// a line break then `1;`), and CSS's where `\\` is also asked for as
/// the others read it.
pub(super) fn passes(asked: Grammars) -> impl Iterator<Item = Grammars> {
    let alone = |g: Grammar| {
        let others = asked.minus(Grammars::one(g));
        let apart = match g {
            Grammar::Css => others.has(Grammar::Backslash),
            _ => !others.is_empty(),
        };
        (asked.has(g) && apart).then(|| Grammars::one(g))
    };
    [
        (!asked.is_empty()).then_some(asked),
        alone(Grammar::Printable),
        alone(Grammar::Css),
    ]
    .into_iter()
    .flatten()
}

/// A set of [`Grammar`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(super) struct Grammars(u8);

impl Grammars {
    fn add(&mut self, g: Grammar) {
        self.0 |= 1 << g as u8;
    }

    pub(super) fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub(super) fn one(g: Grammar) -> Self {
        let mut set = Self::default();
        set.add(g);
        set
    }

    pub(super) fn has(self, g: Grammar) -> bool {
        self.0 & (1 << g as u8) != 0
    }

    pub(super) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(super) fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    pub(super) fn iter(self) -> impl Iterator<Item = Grammar> {
        Grammar::ALL.into_iter().filter(move |g| self.has(*g))
    }
}

/// How a reading takes what a person does not see.
#[derive(Clone, Copy, Default)]
pub(super) struct Mode {
    /// A line break right after `\\` or `=` is kept, so that it is read
    /// as the continued line or soft break it is as written.
    pub breaks: bool,
    /// An escape of a [tag character](tag) reads as the ASCII it mirrors,
    /// not as nothing. Tags written as they are never reach [`read`] so:
    /// they are [mirrored](mirror) before, since the ASCII they mirror may
    /// itself spell escapes.
    pub tags: bool,
    /// `\\` and hex digits read as CSS reads them ([`css_escape`]), not
    /// as C's octal or JavaScript's identity escapes.
    pub css: bool,
    /// Note in [`Reading::again`] what asks for a decoded reading: only in
    /// the readings whose answer is used (each escape that asks is
    /// decoded on a little further, and doing so in every reading cost a
    /// body of decoys four times as much: session 13).
    pub asks: bool,
}

/// Whether `hay` holds a `\\` before a hex digit or an `x`: where a CSS
/// reading differs most from the others (`\\x7A` is `x7A` to CSS, `z` to
/// C; session 12's third review). Where CSS reads `\\t` as `t` and the
/// others as a tab, no CSS reading is made: `\\n` and `\\t` fill JSON.
pub(super) fn has_css_escape(hay: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', hay).any(|i| {
        hay.get(i + 1)
            .is_some_and(|b| b.is_ascii_hexdigit() || matches!(b, b'x' | b'X'))
    })
}

/// CSS's escape at `hay[i..]`: `\\`, one to six hex digits and one blank
/// after them, if there is one (OWASP's and ESAPI's CSS encoders write a
/// key's `-` as `\\2d `; C reads `\\2` as octal, and the key passed:
/// session 12). What CSS reads as U+FFFD (zero, a surrogate, past
/// U+10FFFF) is that.
fn css_escape(hay: &[u8], i: usize) -> (Option<char>, usize) {
    let digits = hay[i + 1..]
        .iter()
        .take(6)
        .take_while(|d| d.is_ascii_hexdigit())
        .count();
    let v = hay[i + 1..i + 1 + digits]
        .iter()
        .fold(0u32, |v, d| v * 16 + hex(*d).unwrap_or(0));
    let mut used = 1 + digits;
    used += match hay.get(i + used..) {
        Some([b'\r', b'\n', ..]) => 2,
        Some([b' ' | b'\t' | b'\n' | b'\r' | b'\x0c', ..]) => 1,
        _ => 0,
    };
    let ch = match v {
        0 => '\u{fffd}',
        v => char::from_u32(v).unwrap_or('\u{fffd}'),
    };
    (Some(ch), used)
}

/// The ASCII a tag character (U+E0020-U+E007E) mirrors. A person sees
/// nothing, so the readings drop them, and a key with tags between its
/// characters is found; but a model reads them as the text they mirror
/// ("ASCII smuggling"), and a key written wholly in tags vanished from
/// every reading (session 12): the scrubber reads a text with tags in it
/// both ways.
pub(super) fn tag(ch: char) -> Option<u8> {
    let v = u32::from(ch);
    (0xE0020..=0xE007E)
        .contains(&v)
        .then(|| (v - 0xE0000) as u8)
}

/// How the readings see a character.
enum Looks {
    /// Nothing: a reader does not see it.
    Nothing,
    /// As the ASCII it stands for.
    Ascii(&'static [u8]),
    /// As itself.
    Itself,
}

/// `ch` as the readings see it: a character a model reads as ASCII
/// ([`compat`]) as that ASCII, a tag character as its ASCII when `tags`
/// says so.
fn looks(ch: char, tags: bool) -> Looks {
    match tag(ch) {
        // The tag space is a blank, dropped as a space is.
        Some(ascii) if tags && ascii != b' ' => Looks::Ascii(ascii_byte(ascii)),
        _ if invisible(ch) => Looks::Nothing,
        _ => compat(ch).map_or(Looks::Itself, Looks::Ascii),
    }
}

/// `b` as a slice that lives for good.
fn ascii_byte(b: u8) -> &'static [u8] {
    static ASCII: [u8; 128] = {
        let mut t = [0u8; 128];
        let mut k = 0;
        while k < 128 {
            t[k] = k as u8;
            k += 1;
        }
        t
    };
    let k = usize::from(b & 0x7F);
    &ASCII[k..k + 1]
}

/// The ASCII a model reads a character as, where that is not the
/// character itself: its compatibility decomposition (NFKD) where that
/// is all ASCII with a letter or digit in it, or one character of it.
/// Fullwidth forms (`ｓｋ`: a
/// re-review), and since session 12's review the mathematical
/// alphanumerics (`𝐬𝐤`, `𝟕`), circled and parenthesised letters,
/// superscripts, ligatures (`ﬁ`), the long s (`ſ`): 1,295 characters in
/// Unicode 15, which a model reads as the letters they are drawn from.
fn compat(ch: char) -> Option<&'static [u8]> {
    // CJK ideographs, Yi and Hangul syllables have none: answers in
    // Chinese, Japanese or Korean skip the search (a test holds it).
    if ch.is_ascii()
        || ('\u{3400}'..'\u{a7f0}').contains(&ch)
        || ('\u{ac00}'..'\u{fb00}').contains(&ch)
    {
        return None;
    }
    let t = &*COMPAT;
    let k = t.binary_search_by_key(&ch, |e| e.0).ok()?;
    Some(&t[k].1[..usize::from(t[k].2)])
}

/// [`compat`]'s table, sorted: made once from the decomposition tables
/// (every code point's decomposition looked up, some tens of ms).
static COMPAT: std::sync::LazyLock<Vec<(char, [u8; 8], u8)>> = std::sync::LazyLock::new(|| {
    (0x80..=0x10FFFF)
        .filter_map(char::from_u32)
        .filter_map(|ch| {
            let (mut ascii, mut n, mut all, mut alnum) = ([0u8; 8], 0, true, false);
            unicode_normalization::char::decompose_compatible(ch, |d| {
                if d.is_ascii() && n < ascii.len() {
                    ascii[n] = d as u8;
                    n += 1;
                    alnum |= d.is_ascii_alphanumeric();
                } else {
                    all = false;
                }
            });
            // One character of punctuation too (`＋`, `⁼`, `﹦`: keys hold
            // `+`, `=` and `/`), but not a space (those are blanks).
            let one = n == 1 && ascii[0] != b' ';
            (all && (alnum || one)).then_some((ch, ascii, n as u8))
        })
        .collect()
});

/// Make [`COMPAT`] now (tens of ms), when a connection is set up, not
/// on the first answer that needs it.
pub(super) fn prepare() {
    std::sync::LazyLock::force(&COMPAT);
}

/// Whether the character at `sq[p]` reads as ASCII ([`compat`]) or as
/// nothing: what the lead bytes [`triggers`] checks rather than takes
/// whole begin (emoji begin with 0xF0, Polish and Czech letters with
/// 0xC4 and 0xC5).
fn reads_other_at(sq: &[u8], p: usize) -> bool {
    match utf8_at(sq, p) {
        Some((ch, _)) => invisible(ch) || compat(ch).is_some(),
        // Cut by the text's end: what it is is not known yet.
        None => sq.len() - p < 4,
    }
}

/// The first bytes of the characters a reading takes otherwise than as
/// themselves: tags (0xF3), what [`compat`] reads as ASCII, what reads
/// as nothing. One list for [`MIRROR_LEAD`] and [`ORDINARY`] (two copies
/// had drifted: U+037E's 0xCD was in one only, session 12's third review).
const LEADS: [u8; 14] = *b"\xC2\xC4\xC5\xC7\xCA\xCB\xCD\xE1\xE2\xE3\xEA\xEF\xF0\xF3";

/// `t` with the entries of `bytes` set to `value`.
const fn marked(mut t: [bool; 256], bytes: &[u8], value: bool) -> [bool; 256] {
    let mut k = 0;
    while k < bytes.len() {
        t[bytes[k] as usize] = value;
        k += 1;
    }
    t
}

/// The first bytes of the characters [`mirror_at`] mirrors.
static MIRROR_LEAD: [bool; 256] = marked([false; 256], &LEADS, true);

/// Where the next byte [`MIRROR_LEAD`] names is, at or after `i`.
fn next_lead(hay: &[u8], i: usize) -> usize {
    hay[i..]
        .iter()
        .position(|b| MIRROR_LEAD[usize::from(*b)])
        .map_or(hay.len(), |k| i + k)
}

/// The ASCII a character written as itself at `hay[i..]` mirrors, and
/// its length: a tag character, or one a model reads as ASCII
/// ([`compat`]: fullwidth forms, mathematical alphanumerics, …).
fn mirror_at(hay: &[u8], i: usize) -> Option<(&'static [u8], usize)> {
    match hay.get(i..(i + 4).min(hay.len()))? {
        [0xF3, 0xA0, 0x80, b @ 0xA0..=0xBF] => Some((ascii_byte(b - 0x80), 4)),
        [0xF3, 0xA0, 0x81, b @ 0x80..=0xBE] => Some((ascii_byte(b - 0x40), 4)),
        _ => {
            let (ch, n) = utf8_at(hay, i)?;
            compat(ch).map(|ascii| (ascii, n))
        }
    }
}

/// Whether `hay` holds a tag character written as itself, or a character
/// a model reads as what an escape is written with (`＼`, `％`, `＆`, `＝`,
/// `＃`, `；`, braces, letters and digits, fullwidth or otherwise): where
/// [mirroring](mirror) it changes how its escapes read. Fullwidth
/// punctuation in Chinese or Japanese text (`，`, `：`) does not.
pub(super) fn has_mirrors(hay: &[u8]) -> Mirrors {
    let mut found = Mirrors::default();
    // Most parts are ASCII, checked a word at a time: a byte at a time,
    // this was 3% of an escape-heavy JSON answer's time.
    if hay.is_ascii() {
        return found;
    }
    let escapes = |b: &u8| b.is_ascii_alphanumeric() || b"\\%&=#;{}".contains(b);
    let mut i = next_lead(hay, 0);
    while i < hay.len() && !(found.tags && found.others) {
        match mirror_at(hay, i) {
            Some(_) if hay[i] == 0xF3 => found.tags = true,
            Some((ascii, _)) if ascii.iter().any(escapes) => found.others = true,
            _ => {}
        }
        i = next_lead(hay, i + 1);
    }
    found
}

/// What [`has_mirrors`] found: tag characters written as they are, and
/// other characters a model reads as what escapes are written with.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(super) struct Mirrors {
    pub tags: bool,
    pub others: bool,
}

/// A text with each character that mirrors ASCII (a tag character, a
/// fullwidth form, a mathematical letter) written as that ASCII:
/// `bytes[i]` stands for `hay[from[i]..to[i]]`. Read before escapes are,
/// as a model reads it: tags spelling `%73` or `\\u0073` spell an escape
/// (session 12's review got the key out so, and with fullwidth `％７３`).
#[derive(Default)]
pub(super) struct Mirrored {
    pub bytes: Vec<u8>,
    pub from: Vec<u32>,
    pub to: Vec<u32>,
}

/// `hay` [mirrored](Mirrored) into `out` (cleared first); tag characters
/// too where `tags` says so, left as they are (for the readings to drop)
/// where not: a reader may strip tags and then read fullwidth escapes
/// (session 12's second review).
pub(super) fn mirror(hay: &[u8], out: &mut Mirrored, tags: bool) {
    out.bytes.clear();
    out.from.clear();
    out.to.clear();
    let mut i = 0;
    while i < hay.len() {
        let next = next_lead(hay, i);
        out.bytes.extend_from_slice(&hay[i..next]);
        out.from.extend(i as u32..next as u32);
        out.to.extend(i as u32 + 1..next as u32 + 1);
        i = next;
        if i == hay.len() {
            break;
        }
        let (bytes, n) = mirror_at(hay, i)
            .filter(|_| tags || hay[i] != 0xF3)
            .unwrap_or((&hay[i..i + 1], 1));
        for &b in bytes {
            out.bytes.push(b);
            out.from.push(i as u32);
            out.to.push((i + n) as u32);
        }
        i += n;
    }
}

impl Mirrored {
    /// This text, made of `outer` (a text that itself stands for
    /// another), mapped to what `outer` stands for.
    pub(super) fn through(&mut self, outer: &Mirrored) {
        for f in &mut self.from {
            *f = outer.from[*f as usize];
        }
        for t in &mut self.to {
            *t = outer.to[*t as usize - 1];
        }
    }
}

/// The ASCII an escape that writes `ch` may have been escaped again
/// with: `ch` begins an escape (`\\\\`, `%5C`, `&amp;`, `=5C`) or is
/// one of what a numeric escape is written with (`#`, `{`, a `u`, an
/// `x`, a zero: a `%5C%75%7B` before `%30`s), as written or as a model
/// reads a look-alike (`\\uff3c` writes `＼`, a tag `\\U000e005c` a
/// tag of `\\`: session 13's review).
fn wraps(ch: char) -> Option<u8> {
    let ascii = match ch {
        c if c.is_ascii() => c as u8,
        c => match tag(c).map(ascii_byte).or_else(|| compat(c))? {
            &[b] => b,
            _ => return None,
        },
    };
    matches!(
        ascii,
        b'\\' | b'%' | b'&' | b'=' | b'#' | b'{' | b'u' | b'U' | b'x' | b'X' | b'0'
    )
    .then_some(ascii)
}

/// Whether the escape at `hay[i..]` (`used` bytes) writes `ch` as the
/// start of another escape, one that writes a character by its code or
/// name (`\\\\` before `u0073`, `%5C` before `x73`, `&amp;` before
/// `#115;`), or a part of one (`%23`, `%7B`, `%30`). A `\\\\` before a
/// blank, a quote or a letter that begins no escape (regular expressions,
/// prose quoted in JSON) writes none: read again, an escape-heavy answer
/// cost 2.6 times as much (session 13).
fn rewraps(hay: &[u8], i: usize, ch: char, used: usize, css: bool) -> bool {
    let Some(ch) = wraps(ch).filter(|_| used > 1) else {
        return false;
    };
    // A form's `+` is a space where a `%` escape wrote the `\\`.
    let form = hay[i] == b'%';
    let Some((next, adjacent)) = after_blanks(hay, i + used, form) else {
        // The text ends, or blanks go on too long. At a frame's end what
        // follows is not known yet: this waits and is read again with it.
        // (Read again here, a megabyte of `\\` in 256-byte frames was
        // read three times over: session 13's review.)
        return false;
    };
    // Through blanks (`\\\\ u0073` reads as `\\u0073` through them),
    // but not to a letter that writes a blank or a quote: a `\\\\`
    // before a blank and a word is common prose.
    let first_look = match ch {
        b'\\' if adjacent => next.is_ascii_hexdigit() || b"uUxXNo01234567".contains(&next),
        b'\\' => b"uUxXNo01234567{".contains(&next),
        b'%' => next.is_ascii_hexdigit() || matches!(next, b'u' | b'U'),
        // A blank then a word is prose (`&amp; more`); a `#` is not.
        b'&' => next == b'#' || (adjacent && next.is_ascii_alphabetic()),
        b'=' => adjacent && next.is_ascii_hexdigit(),
        // A part of a numeric escape (`%23`, `%7B`, `%30`): rare.
        _ => return true,
    };
    first_look && writes_by_code(hay, i, used, ch, css)
}

/// Whether the text decoded once holds, where the escape at
/// `hay[i..i + used]` wrote `w`, an escape that writes a character by
/// its code or name: `w` and what follows, decoded as the pass decodes
/// it (this grammar's escapes, through blanks and what reads as
/// nothing), read as an escape longer than two bytes, as CSS reads it or
/// as the others do (`\\u0073`, `\\163`, `\\N{…}`, `&#115;`, `%73`,
/// CSS's `\\73 `). A `\\` before a letter that makes none (`\\Users`
/// in a Windows path, `\\d` in a regular expression, `\\n`) is not read
/// again: JSON with Windows paths had cost nine times as much (session
/// 13).
fn writes_by_code(hay: &[u8], i: usize, used: usize, w: u8, css: bool) -> bool {
    let mut ahead = Ahead {
        buf: [0u8; ESCAPE_WIDTH + 8],
        n: 1,
        j: i + used,
        grammar: hay[i],
        css,
    };
    ahead.buf[0] = w;
    // Most escapes are short (`\\U0000XXXX`, `&#1114111;`): a dozen bytes
    // first, and the rest of the window only for names and zeros.
    for limit in [SHORT_AHEAD, ahead.buf.len()] {
        ahead.fill(hay, limit);
        let buf = &ahead.buf[..ahead.n];
        if [false, true]
            .into_iter()
            .any(|css| matches!(decoded(buf, 0, css), Some((Some(_), k)) if k > 2))
        {
            return true;
        }
        if ahead.j >= hay.len() || !ahead.may_run_on() {
            return false;
        }
    }
    // Past the window, a numeric escape's leading zeros (`%5Cu{` and a
    // thousand `%30`s) may run on: one that begins so is one.
    zeros_in(&ahead.buf[..ahead.n], 0, false) > 0
}

/// How many bytes of what [`writes_by_code`] decodes ahead are read
/// first: the longest escape but names and zeros, a surrogate pair
/// `\\uDB40\\uDC73` (and room for a character more).
const SHORT_AHEAD: usize = 12 + 4;

/// What [`writes_by_code`] has decoded ahead: `buf[..n]`, from
/// `hay[..j]`, in the grammar whose first byte is `grammar`.
struct Ahead {
    buf: [u8; ESCAPE_WIDTH + 8],
    n: usize,
    j: usize,
    grammar: u8,
    /// Whether the escape that asks was read as CSS reads `\\`: the
    /// escapes after it are too (ESAPI's CSS encoder over JSON writes
    /// `\\5c udb40\\5c udc73`; read otherwise, `\\5` was octal: the third
    /// review).
    css: bool,
}

impl Ahead {
    /// Whether what is decoded so far may begin an escape longer than
    /// [`SHORT_AHEAD`]: a `\\N{…}` name, an `&` and a name, or a numeric
    /// escape with its zeros (`\\u{`, `\\x{`, `\\o{`, `&#`). (Decoding the
    /// whole window after every one of a body of decoys cost it three
    /// times as much.)
    fn may_run_on(&self) -> bool {
        match self.buf[..self.n] {
            [b'\\', b'N' | b'u' | b'U' | b'x' | b'X' | b'o', b'{', ..] => true,
            // A high surrogate, whose low half may come after a line
            // continued, blanks or what reads as nothing (the third
            // review).
            [b'\\' | b'%', b'u' | b'U', b'd' | b'D', h, ..] => {
                matches!(h, b'8'..=b'9' | b'a'..=b'b' | b'A'..=b'B')
            }
            [b'&', b'#', ..] => true,
            [b'&', b, ..] => b.is_ascii_alphabetic(),
            _ => false,
        }
    }

    /// Decode on until `limit` bytes (and room for one more character).
    fn fill(&mut self, hay: &[u8], limit: usize) {
        let grammar = self.grammar;
        while self.n + 4 <= limit && self.j < hay.len() {
            let b = hay[self.j];
            // Line breaks are kept: after a `\\` they continue a line
            // (between a surrogate pair's halves, as JavaScript joins
            // them).
            let kept = |c: char| matches!(c, '\n' | '\r');
            if (super::squeezed::BLANK[usize::from(b)] && !kept(char::from(b)))
                || (grammar == b'%' && b == b'+')
            {
                self.j += 1;
                continue;
            }
            let seen = match b {
                _ if b == grammar => decoded(hay, self.j, self.css),
                0x80.. => utf8_at(hay, self.j).map(|(c, k)| (Some(c), k)),
                _ => None,
            };
            match seen {
                Some((Some(c), k)) if invisible(c) && !kept(c) => self.j += k,
                Some((None, k)) => self.j += k,
                Some((Some(c), k)) if b == grammar => {
                    let c = wraps(c).map_or(c, char::from);
                    self.n += c.encode_utf8(&mut self.buf[self.n..]).len();
                    self.j += k;
                }
                _ => {
                    self.buf[self.n] = b;
                    self.n += 1;
                    self.j += 1;
                }
            }
        }
    }
}

/// The first byte at or after `hay[k]` that is not a blank or what reads
/// as nothing, as written or escaped (`\\\\\\t`, `%5C%20`, a zero-width
/// space: the outer escaper writes the blank too; session 13's review),
/// an escape of ASCII read as what it writes; and whether none came
/// before it. `None` where the text ends first, or after
/// [`MAX_BLANKS`].
fn after_blanks(hay: &[u8], mut k: usize, form: bool) -> Option<(u8, bool)> {
    let start = k;
    for _ in 0..MAX_BLANKS {
        let b = *hay.get(k)?;
        if super::squeezed::BLANK[usize::from(b)] || (form && b == b'+') {
            k += 1;
            continue;
        }
        let seen = match b {
            b'\\' | b'%' | b'&' | b'=' => decoded(hay, k, false),
            0x80.. => utf8_at(hay, k).map(|(c, n)| (Some(c), n)),
            _ => None,
        };
        match seen {
            Some((None, n)) => k += n,
            Some((Some(c), n)) if invisible(c) => k += n,
            Some((Some(c), _)) if c.is_ascii() && b < 0x80 => return Some((c as u8, k == start)),
            _ => return Some((b, k == start)),
        }
    }
    None
}

/// How many blanks [`after_blanks`] reads through.
const MAX_BLANKS: usize = 64;

/// `hay` with each escape decoded once and all else as it is written
/// (case, blanks, what a reader does not see), into `out` (cleared
/// first): the text an escaper escaped again. Its escapes are then read
/// as any text's are: `\\\\u0073` (JSON of JSON), `%5Cu0073` (a JSON
/// escape percent-encoded), `&amp;#115;` (HTML escaped twice),
/// `%255Cu0073`, `\\\\N{…}` all read as `s` (session 12's third review,
/// left then; session 13). Made only where a reading's [`Reading::again`]
/// says. (Whether it says so depends on what lies near each escape, but in
/// a run of `\\\\` on where the run ends: see [`super::in_step`].)
pub(super) fn decode_once(hay: &[u8], out: &mut Mirrored, grammars: Grammars) {
    out.bytes.clear();
    out.from.clear();
    out.to.clear();
    let mut first = [false; 256];
    for g in grammars.iter() {
        first[usize::from(g.first())] = true;
    }
    // A form (`quote_plus`, `urlencode`) writes a space as `+` (session
    // 13's review). No harm elsewhere: this reading is one more.
    let form = grammars.has(Grammar::Percent);
    if form {
        first[usize::from(b'+')] = true;
    }
    // CSS's reading of `\\` where it alone asks for one.
    let css = grammars.has(Grammar::Css) && !grammars.has(Grammar::Backslash);
    let mut i = 0;
    while i < hay.len() {
        let next = hay[i..]
            .iter()
            .position(|b| first[usize::from(*b)])
            .map_or(hay.len(), |k| i + k);
        out.bytes.extend_from_slice(&hay[i..next]);
        out.from.extend(i as u32..next as u32);
        out.to.extend(i as u32 + 1..next as u32 + 1);
        i = next;
        if i == hay.len() {
            break;
        }
        let (ch, used) = match hay[i] {
            b'+' => (Some(' '), 1),
            b => decoded(hay, i, css).unwrap_or((Some(char::from(b)), 1)),
        };
        // A look-alike of what escapes are written with, as the ASCII
        // a model reads it as: `\\uff3cu0073` is `\\u0073` to it.
        let ch = ch.map(|c| match wraps(c) {
            Some(b) if !c.is_ascii() => char::from(b),
            _ => c,
        });
        if let Some(ch) = ch {
            let mut buf = [0u8; 4];
            for &b in ch.encode_utf8(&mut buf).as_bytes() {
                out.bytes.push(b);
                out.from.push(i as u32);
                out.to.push((i + used) as u32);
            }
        }
        i += used;
    }
}

impl Reading {
    /// `bytes`, lower-cased, each read from `hay[from..to]`.
    fn push_all(&mut self, bytes: &[u8], from: usize, to: usize) {
        for b in bytes {
            self.text.push(b.to_ascii_lowercase());
            self.from.push(from as u32);
            self.to.push(to as u32);
        }
    }

    /// A reading made of a [mirrored](Mirrored) text, mapped back to the
    /// text it mirrors.
    pub(super) fn map_back(&mut self, u: &Mirrored) {
        for f in &mut self.from {
            *f = u.from[*f as usize];
        }
        for t in &mut self.to {
            *t = u.to[*t as usize - 1];
        }
    }
}

/// Where escapes begin in `sq` (a [squeezed](super::squeezed) text):
/// `\\ & % =`, and the first bytes of the UTF-8 of characters a reader
/// does not see (no-break and zero-width spaces, soft hyphens, Hangul
/// fillers, tag characters, …: re-review) or reads as ASCII (fullwidth
/// forms).
pub(super) fn triggers(sq: &[u8]) -> Vec<usize> {
    let mut at: Vec<usize> = memchr::memchr3_iter(b'\\', b'&', b'%', sq)
        .chain(memchr::memchr3_iter(b'=', 0xC2, 0xCD, sq))
        .chain(memchr::memchr3_iter(0xE1, 0xE2, 0xE3, sq))
        .chain(memchr::memchr2_iter(0xEF, 0xF3, sq))
        .chain(memchr::memchr3_iter(0xF0, 0xC4, 0xC5, sq).filter(|&p| reads_other_at(sq, p)))
        .chain(memchr::memchr3_iter(0xC7, 0xCA, 0xCB, sq).filter(|&p| reads_other_at(sq, p)))
        .chain(memchr::memchr_iter(0xEA, sq).filter(|&p| reads_other_at(sq, p)))
        .collect();
    at.sort_unstable();
    at
}

/// Whether `hay` holds any byte [`triggers`] finds: without one, nothing
/// in it is read (a test holds the two to the same bytes).
pub(super) fn has_trigger(hay: &[u8]) -> bool {
    memchr::memchr3(b'\\', b'&', b'%', hay).is_some()
        || memchr::memchr3(b'=', 0xC2, 0xCD, hay).is_some()
        || memchr::memchr3(0xE1, 0xE2, 0xE3, hay).is_some()
        || memchr::memchr2(0xEF, 0xF3, hay).is_some()
        || memchr::memchr3_iter(0xF0, 0xC4, 0xC5, hay).any(|p| reads_other_at(hay, p))
        || memchr::memchr3_iter(0xC7, 0xCA, 0xCB, hay).any(|p| reads_other_at(hay, p))
        || memchr::memchr_iter(0xEA, hay).any(|p| reads_other_at(hay, p))
}

/// The most bytes one escape this reading decodes may span, besides the
/// zeros a numeric one may begin with ([`zeros_after`]): `&#x`, 8 digits
/// and `;`; `\\u{`, 40 digits and `}`; a `\\N{…}` name of at most
/// [`MAX_NAME`] bytes.
pub(super) const ESCAPE_WIDTH: usize = MAX_NAME + 4;

/// The longest character name read in `\\N{…}`.
const MAX_NAME: usize = 60;

/// How many bytes from `sq[p]` (squeezed: lower case, no blanks) an
/// `&#`, `&#x`, `\\u{` or `\\x{` and the zeros after it span (none where
/// no zero follows). A browser reads `&#x` with any number of leading
/// zeros, and JavaScript `\\u{…}` too; a bound on them had let a secret
/// through with one zero more than it (session 11).
pub(super) fn zeros_after(sq: &[u8], p: usize) -> usize {
    // As written, and with what is written escaped again read as the
    // escape it writes (`%5Cu{` or `\\\\u{` and `%30`s: the readings
    // decode once and read again, [`decode_once`]). Both: `\\u{…75}`
    // is the escape of a `u` with its zeros, and of nothing escaped.
    zeros_in(sq, p, false).max(zeros_in(sq, p, true))
}

/// [`zeros_after`], with escapes that [write](wraps) what numeric
/// escapes are written with read as what they write where `again`.
fn zeros_in(sq: &[u8], p: usize, again: bool) -> usize {
    // Read as a model reads them: through what reads as nothing, and
    // each character that reads as one ASCII byte as that byte (a
    // fullwidth `＆＃ｘ`, or a zero-width space before the zeros, had
    // ended the window 192 bytes in: session 12's second review).
    // The escape begins at `p`: a trigger on what reads as nothing is
    // not one (from each of a run of them, the search for what follows
    // went over the rest of the run).
    let first = match sq.get(p) {
        Some(&b) if b < 0x80 => Some(b),
        _ => mirror_at(sq, p).and_then(|(ascii, _)| match ascii {
            &[b] => Some(b),
            _ => None,
        }),
    };
    if !matches!(first, Some(b'&' | b'\\' | b'%' | b'=')) {
        return 0;
    }
    // Most escapes (`\\"`, `\\\\`, `&amp;`) are told from these at
    // their second byte. Escaped again, from what writes `\\`, `&`, `#`,
    // `%`, `{`, `u`, `x` or `0`: `\\\\`, `\\x5c`, `\\u005c`, octal
    // `\\134`, `\\N{…}`; `%5c`, `%26`, `%25`, `%7b`, `%u005c`; `&amp;`,
    // `&bsol;`, `&num;`, `&lbrace;`, `&percnt;`, `&#92;`. (Squeezed text is
    // in lower case, where quoted-printable's `=5C` is no escape.)
    let second = |set: &[u8]| {
        sq.get(p + 1)
            .is_some_and(|b| !b.is_ascii() || set.contains(b))
    };
    let told = match (again, first) {
        (false, Some(b'&' | b'\\')) => second(b"#uxo"),
        (false, _) => false,
        (true, Some(b'&')) => second(b"#abelnp"),
        // `\\\\` is the common one: told by its third byte too.
        (true, Some(b'\\')) if sq.get(p + 1) == Some(&b'\\') => {
            matches!(sq.get(p + 2), Some(b'u' | b'x' | b'o'))
        }
        (true, Some(b'\\')) => second(b"01234567uxno"),
        (true, Some(b'%')) => second(b"2357u"),
        (true, _) => false,
    };
    if !told {
        return 0;
    }
    let mut i = p;
    let mut next = || {
        if again {
            seen_again(sq, &mut i)
        } else {
            seen_byte(sq, &mut i)
        }
    };
    let prefix = [next(), next(), next()];
    let mut zeros = match prefix {
        [Some(b'&'), Some(b'#'), Some(b'x')] => 0,
        [Some(b'&'), Some(b'#'), Some(b'0')] => 1,
        [Some(b'\\'), Some(b'u' | b'x' | b'o'), Some(b'{')] => 0,
        _ => return 0,
    };
    let mut end = i;
    loop {
        let mut j = end;
        let zero = if again {
            seen_again(sq, &mut j)
        } else {
            seen_byte(sq, &mut j)
        };
        if zero != Some(b'0') {
            break;
        }
        end = j;
        zeros += 1;
    }
    if zeros == 0 { 0 } else { end - p }
}

/// [`seen_byte`], where an escape at `sq[*i]` that [writes](wraps) what
/// numeric escapes are written with is read as what it writes.
fn seen_again(sq: &[u8], i: &mut usize) -> Option<u8> {
    if matches!(sq.get(*i), Some(b'\\' | b'%' | b'&' | b'='))
        && let Some((Some(ch), used)) = decoded(sq, *i, false)
        && ch.is_ascii()
        && wraps(ch).is_some()
    {
        *i += used;
        return Some((ch as u8).to_ascii_lowercase());
    }
    seen_byte(sq, i)
}

/// The next byte of `sq[*i..]` as a model reads it (lower case), past
/// what reads as nothing; `*i` moves past it. `None` at the end or at a
/// character that is not one ASCII byte.
fn seen_byte(sq: &[u8], i: &mut usize) -> Option<u8> {
    loop {
        let b = *sq.get(*i)?;
        if b < 0x80 {
            *i += 1;
            return Some(b.to_ascii_lowercase());
        }
        if let Some((&[ascii], n)) = mirror_at(sq, *i) {
            *i += n;
            return Some(ascii.to_ascii_lowercase());
        }
        let (ch, n) = utf8_at(sq, *i)?;
        if !invisible(ch) {
            return None;
        }
        *i += n;
    }
}

/// Where a numeric escape that runs to the end of `text` begins (`&#`,
/// `&#x` or `\\u{` and digits, with blanks and bytes above ASCII among
/// them: what a reader does not see), if one does. Cut by a frame's end,
/// a `\\u{` reads as one character per byte, and with many leading zeros
/// ([`zeros_after`]) those took the room of the secret's characters
/// before it in what waits. (A cut `&#`/`&#x` reads as one NUL, which
/// reads as nothing and takes no room.) Past [`super::MAX_HELD`] what
/// waits goes on regardless: a spelling broken by more than that of
/// what reads as nothing (zeros included) across a frame's end is not
/// found (docs/security.md).
pub(super) fn cut_escape(text: &[u8]) -> Option<usize> {
    let skip = |mut i: usize, digits: bool| {
        while i > 0 {
            let b = text[i - 1];
            let unseen = super::squeezed::BLANK[usize::from(b)] || b >= 0x80;
            if !(unseen || (digits && b.is_ascii_hexdigit())) {
                break;
            }
            i -= 1;
        }
        i
    };
    let before = |i: usize| i.checked_sub(1).map(|k| (text[k], k));
    let amp = |k: usize| match before(skip(k, false)) {
        Some((b'&', k)) => Some(k),
        _ => None,
    };
    // A percent escape the end cuts (`%`, `%3`) among the zeros of a
    // text decoded once: `%5Cu{` and `%30`s cut inside a `%30` (session
    // 13's review).
    let end = match text {
        [.., b'%'] => text.len() - 1,
        [.., b'%', h] if h.is_ascii_hexdigit() => text.len() - 2,
        _ => text.len(),
    };
    match before(skip(end, true))? {
        (b'x' | b'X', k) => match before(skip(k, false))? {
            (b'#', k) => amp(k),
            _ => None,
        },
        (b'#', k) => amp(k),
        (b'{', k) => match before(skip(k, false))? {
            (b'u' | b'U' | b'x' | b'X' | b'o', k) => match before(skip(k, false))? {
                (b'\\', k) => Some(k),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// The parts of a squeezed text worth reading, as squeezed ranges: each
/// escape with `reach` bytes before it and [`ESCAPE_WIDTH`], its
/// leading zeros and `reach` after, merged. A spelling of at most `reach` characters that holds an
/// escape lies whole in one part: between two of its escapes there are at
/// most `reach` characters, and before its first and after its last
/// escape too. Blanks take no room here, so no run of them, however long,
/// breaks a part (re-review). Text with no escape is not read at all.
pub(super) fn windows(sq: &[u8], triggers: &[usize], reach: usize) -> Vec<std::ops::Range<usize>> {
    let len = sq.len();
    let mut parts: Vec<std::ops::Range<usize>> = Vec::new();
    for &p in triggers {
        let width = ESCAPE_WIDTH + zeros_after(sq, p);
        let (start, end) = (p.saturating_sub(reach), (p + width + reach).min(len));
        match parts.last_mut() {
            // A later escape may end before an earlier one (a fullwidth
            // `＃` after `＆` and its zeros): the part keeps the later end.
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => parts.push(start..end),
        }
    }
    parts
}

/// Named references whose character can be part of a secret.
const NAMED: &[(&[u8], char)] = &[
    (b"amp", '&'),
    (b"lt", '<'),
    (b"gt", '>'),
    (b"quot", '"'),
    (b"apos", '\''),
    (b"sol", '/'),
    (b"bsol", '\\'),
    (b"plus", '+'),
    (b"equals", '='),
    (b"colon", ':'),
    (b"semi", ';'),
    (b"period", '.'),
    (b"comma", ','),
    (b"num", '#'),
    (b"percnt", '%'),
    (b"excl", '!'),
    (b"quest", '?'),
    (b"lowbar", '_'),
    (b"dollar", '$'),
    (b"commat", '@'),
    (b"ast", '*'),
    (b"lpar", '('),
    (b"rpar", ')'),
    (b"lsqb", '['),
    (b"rsqb", ']'),
    (b"lcub", '{'),
    (b"rcub", '}'),
    (b"verbar", '|'),
    (b"grave", '`'),
    (b"hat", '^'),
    (b"tilde", '~'),
    (b"dash", '-'),
    (b"hyphen", '-'),
    (b"lbrack", '['),
    (b"rbrack", ']'),
    (b"lbrace", '{'),
    (b"rbrace", '}'),
    (b"vert", '|'),
    (b"verticalline", '|'),
    (b"midast", '*'),
    (b"underbar", '_'),
    (b"newline", '\n'),
    (b"tab", '\t'),
    (b"nbsp", '\u{a0}'),
    (b"nonbreakingspace", '\u{a0}'),
    (b"shy", '\u{ad}'),
    (b"ensp", '\u{2002}'),
    (b"emsp", '\u{2003}'),
    (b"thinsp", '\u{2009}'),
    (b"hairsp", '\u{200a}'),
    (b"zwnj", '\u{200c}'),
    (b"zwj", '\u{200d}'),
    (b"lrm", '\u{200e}'),
    (b"rlm", '\u{200f}'),
    (b"zerowidthspace", '\u{200b}'),
    (b"negativethinspace", '\u{200b}'),
    (b"negativemediumspace", '\u{200b}'),
    (b"negativethickspace", '\u{200b}'),
    (b"negativeverythinspace", '\u{200b}'),
    (b"nobreak", '\u{2060}'),
    (b"invisibletimes", '\u{2062}'),
    (b"invisiblecomma", '\u{2063}'),
    (b"applyfunction", '\u{2061}'),
    (b"ic", '\u{2063}'),
    (b"it", '\u{2062}'),
    (b"af", '\u{2061}'),
];

/// [`NAMED`] in the order of their names.
static BY_NAME: std::sync::LazyLock<Vec<(&[u8], char)>> = std::sync::LazyLock::new(|| {
    let mut v = NAMED.to_vec();
    v.sort_unstable();
    v
});

fn hex(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// The value of `n` hex digits at `hay[at..]`.
fn hex_at(hay: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = hay.get(at..at + n)?;
    digits.iter().try_fold(0u32, |v, &d| Some(v * 16 + hex(d)?))
}

/// The UTF-16 code unit (or, in braces or after `\\U`, the code point) a
/// `\\uXXXX`, `\\u{…}`, `\\UXXXXXXXX` or `%uXXXX` at `hay[i..]` writes,
/// and its length.
fn code_unit(hay: &[u8], i: usize) -> Option<(u32, usize)> {
    // Python's, C's and C#'s `\\U` takes eight digits: read as four, a
    // key written `\\U00000051…` read as NULs and digits (this session's
    // review of its own change).
    if hay[i] == b'\\'
        && hay.get(i + 1) == Some(&b'U')
        && let Some(v) = hex_at(hay, i + 2, 8)
    {
        return Some((v, 10));
    }
    if hay.get(i + 2) != Some(&b'{') || hay[i] != b'\\' {
        return Some((hex_at(hay, i + 2, 4)?, 6));
    }
    // ES6's `\\u{73}`, with leading zeros, as many as there are
    // ([`zeros_after`]).
    let zeros = hay[i + 3..].iter().take_while(|d| **d == b'0').count();
    let rest = hay[i + 3 + zeros..]
        .iter()
        .take(7)
        .take_while(|d| d.is_ascii_hexdigit())
        .count();
    let digits = zeros + rest;
    if digits == 0 || rest > 6 || hay.get(i + 3 + digits) != Some(&b'}') {
        return None;
    }
    let value = if rest == 0 {
        0
    } else {
        hex_at(hay, i + 3 + zeros, rest)?
    };
    Some((value, 4 + digits))
}

/// The character of the code unit `v` written at `hay[i..i + used]`: a
/// high surrogate followed by an escape of a low one is the pair's
/// character, as JSON and JavaScript read `\\udb40\\udc20` (a tag
/// character, invisible: session 11's review put one between each of
/// the key's characters, and each half alone is no character).
fn paired(hay: &[u8], i: usize, v: u32, used: usize) -> Option<(Option<char>, usize)> {
    if (0xD800..=0xDBFF).contains(&v) {
        // JavaScript joins the halves across line continuations (`\\`
        // and a line break): session 11's second review hid a tag
        // character so.
        let mut j = i + used;
        while let Some(n) = continuation(hay, j) {
            j += n;
        }
        let used = j - i;
        let low = matches!(hay.get(j..j + 2), Some([b'\\' | b'%', b'u' | b'U']))
            .then(|| code_unit(hay, j))
            .flatten();
        if let Some((w, more)) = low.filter(|(w, _)| (0xDC00..=0xDFFF).contains(w)) {
            let ch = 0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00);
            return Some((Some(char::from_u32(ch)?), used + more));
        }
    }
    Some((Some(char::from_u32(v)?), used))
}

/// The length of a line break at `hay[i..]` that a `\\` before it
/// continues the line across (and that the reading keeping line breaks
/// keeps after `\\` or `=`): LF, CRLF, a lone CR, or U+2028 or U+2029 as
/// JavaScript reads them (session 11's review).
pub(super) fn line_break_at(hay: &[u8], i: usize) -> Option<usize> {
    match hay.get(i..)? {
        [b'\r', b'\n', ..] => Some(2),
        [b'\n' | b'\r', ..] => Some(1),
        [0xE2, 0x80, 0xA8 | 0xA9, ..] => Some(3),
        _ => None,
    }
}

/// The character at `hay[i..]` and its length, ASCII or not.
fn itself(hay: &[u8], i: usize) -> Option<(char, usize)> {
    match *hay.get(i)? {
        b if b.is_ascii() => Some((char::from(b), 1)),
        _ => utf8_at(hay, i),
    }
}

/// The length of a line continuation at `hay[j..]`: `\\` and a
/// [line break](line_break_at).
fn continuation(hay: &[u8], j: usize) -> Option<usize> {
    if hay.get(j) != Some(&b'\\') {
        return None;
    }
    line_break_at(hay, j + 1).map(|n| 1 + n)
}

/// One escape at `hay[i..]`: the character it stands for (`None` for a
/// soft line break, which stands for nothing) and its length.
fn escape(hay: &[u8], i: usize, css: bool) -> Option<(Option<char>, usize)> {
    let c = |v: u32| char::from_u32(v).map(Some);
    match hay[i] {
        // CSS: hex digits, a line continued, or any other character as
        // itself (`\\t` is `t` there, not a tab: session 12's third
        // review).
        b'\\' if css => match hay.get(i + 1)? {
            d if d.is_ascii_hexdigit() => Some(css_escape(hay, i)),
            _ => continuation(hay, i)
                .map(|n| (None, n))
                .or_else(|| itself(hay, i + 1).map(|(ch, n)| (Some(ch), 1 + n))),
        },
        b'\\' => match *hay.get(i + 1)? {
            b'u' | b'U' => code_unit(hay, i).and_then(|(v, used)| paired(hay, i, v, used)),
            // Octal, as C and JavaScript write `\163`.
            b'0'..=b'7' => {
                let digits = hay[i + 1..]
                    .iter()
                    .take(3)
                    .take_while(|d| (b'0'..=b'7').contains(*d))
                    .count();
                let v = hay[i + 1..i + 1 + digits]
                    .iter()
                    .fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                (v <= 0xFF).then_some(())?;
                Some((c(v)?, 1 + digits))
            }
            // Python's `\\N{LATIN SMALL LETTER S}` (session 12's review).
            b'N' if hay.get(i + 2) == Some(&b'{') => named(hay, i),
            // Perl's and Ruby's `\\x{73}`, read as `\\u{73}` is (session
            // 12's review).
            b'x' | b'X' if hay.get(i + 2) == Some(&b'{') => {
                code_unit(hay, i).and_then(|(v, used)| paired(hay, i, v, used))
            }
            b'x' | b'X' => Some((c(hex_at(hay, i + 2, 2)?)?, 4)),
            // Perl's `\\o{163}`, with any number of leading zeros.
            b'o' if hay.get(i + 2) == Some(&b'{') => {
                let body = &hay[i + 3..];
                let zeros = body.iter().take_while(|d| **d == b'0').count();
                let rest = body[zeros..]
                    .iter()
                    .take(8)
                    .take_while(|d| (b'0'..=b'7').contains(*d))
                    .count();
                if zeros + rest == 0 || rest > 7 || body.get(zeros + rest) != Some(&b'}') {
                    return None;
                }
                let v = body[zeros..zeros + rest]
                    .iter()
                    .fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                Some((c(v)?, 4 + zeros + rest))
            }
            b if b.is_ascii_punctuation() => Some((Some(b as char), 2)),
            // JSON's and C's control characters, read as the blanks they
            // write: `\\n` or `\\t` between the key's characters hid it,
            // where a line break as written did not (session 12).
            b'n' => Some((Some('\n'), 2)),
            b't' => Some((Some('\t'), 2)),
            b'r' => Some((Some('\r'), 2)),
            b'b' => Some((Some('\u{8}'), 2)),
            b'f' => Some((Some('\u{c}'), 2)),
            b'v' => Some((Some('\u{b}'), 2)),
            // C's, Go's (`%q`) and Python's BEL: what encoders write `\\a`
            // for. JavaScript reads it as `a`, but no encoder writes an
            // `a` so (session 12's third review).
            b'a' => Some((Some('\u{7}'), 2)),
            // What JavaScript reads a letter or digit after `\\` as where
            // it begins no escape: itself (`"\\Q\\w"` is `"Qw"`; session 12).
            b if b.is_ascii_alphanumeric() => Some((Some(b as char), 2)),
            // A line continued (shell, C, Python strings, JavaScript):
            // stands for nothing (re-review).
            // Any other character after `\\` is itself to JavaScript (a
            // fullwidth `\\ｆ` is `ｆ`, read as `f`: session 12's third
            // review), unless the `\\` continues a line.
            _ => continuation(hay, i)
                .map(|n| (None, n))
                .or_else(|| itself(hay, i + 1).map(|(ch, n)| (Some(ch), 1 + n))),
        },
        b'%' => {
            // IIS's `%u0073`.
            if matches!(hay.get(i + 1), Some(b'u' | b'U')) {
                return code_unit(hay, i).and_then(|(v, used)| paired(hay, i, v, used));
            }
            let v = hex_at(hay, i + 1, 2)?;
            // Encoded twice: `%25` then two digits.
            if v == 0x25
                && let Some(w) = hex_at(hay, i + 3, 2)
            {
                return Some((c(w)?, 5));
            }
            Some((c(v)?, 3))
        }
        b'=' => match hay.get(i + 1..i + 3)? {
            [b'\r', b'\n'] => Some((None, 3)),
            [b'\n', _] => Some((None, 2)),
            // Quoted-printable writes its digits in upper case.
            [a, b]
                if a.is_ascii_hexdigit()
                    && b.is_ascii_hexdigit()
                    && !a.is_ascii_lowercase()
                    && !b.is_ascii_lowercase() =>
            {
                Some((c(hex_at(hay, i + 1, 2)?)?, 3))
            }
            _ => None,
        },
        b'&' => reference(hay, i),
        _ => None,
    }
}

/// A Python `\\N{…}` escape at `hay[i..]` that names a character read as
/// ASCII or as nothing: a letter or digit in any style (`LATIN SMALL
/// LETTER S`, `FULLWIDTH DIGIT SEVEN`, `MATHEMATICAL BOLD CAPITAL Q`, `TAG
/// LATIN SMALL LETTER S`), ASCII punctuation (`PLUS SIGN`, in any of those
/// styles too), or an invisible character (`ZERO WIDTH SPACE`, `ZWSP`).
/// Case and blanks do not matter (Python ignores case). Any other name in
/// Unicode's list, or Perl's `\\N{U+73}`, reads as the character it
/// names ([`by_name`]).
fn named(hay: &[u8], i: usize) -> Option<(Option<char>, usize)> {
    let body = &hay[i + 3..(i + 3 + MAX_NAME + 1).min(hay.len())];
    let end = memchr::memchr(b'}', body)?;
    let name: Vec<u8> = body[..end]
        .iter()
        .filter(|b| !super::squeezed::BLANK[usize::from(**b)])
        .map(u8::to_ascii_uppercase)
        .collect();
    let used = 3 + end + 1;
    if INVISIBLE_NAMES.iter().any(|n| n.as_bytes() == name) {
        return Some((None, used));
    }
    // A tag character stays one: the readings take tags both ways.
    let (tag, rest) = match name.strip_prefix(b"TAG") {
        Some(rest) => (true, rest),
        None => (false, &name[..]),
    };
    let ch = match named_ascii(rest) {
        Some(ascii) if tag => char::from_u32(0xE0000 + u32::from(ascii))?,
        Some(ascii) => char::from(ascii),
        None => by_name(&body[..end])?,
    };
    Some((Some(ch), used))
}

/// The character `name` names in Unicode's list (any case, as Python
/// reads `\\N{…}`: `KELVIN SIGN`, `SUPERSCRIPT TWO`, `ROMAN NUMERAL
/// ONE`, which the reading then takes as a model does), or Perl's
/// `U+73`. Python's `namereplace` writes a name for each character
/// outside ASCII, so a key written in such characters comes out named.
fn by_name(name: &[u8]) -> Option<char> {
    let name = std::str::from_utf8(name).ok()?.trim();
    if let Some(hex) = name
        .strip_prefix("U+")
        .or_else(|| name.strip_prefix("u+"))
        .filter(|h| (1..=6).contains(&h.len()))
    {
        return char::from_u32(u32::from_str_radix(hex, 16).ok()?);
    }
    unicode_names2::character(name)
}

/// Names (blanks taken out) of characters a reader does not see, and the
/// abbreviations Python takes for them.
const INVISIBLE_NAMES: &[&str] = &[
    "ZEROWIDTHSPACE",
    "ZEROWIDTHNON-JOINER",
    "ZEROWIDTHJOINER",
    "ZEROWIDTHNO-BREAKSPACE",
    "BYTEORDERMARK",
    "WORDJOINER",
    "SOFTHYPHEN",
    "NO-BREAKSPACE",
    "NARROWNO-BREAKSPACE",
    "LEFT-TO-RIGHTMARK",
    "RIGHT-TO-LEFTMARK",
    "COMBININGGRAPHEMEJOINER",
    "INVISIBLESEPARATOR",
    "INVISIBLETIMES",
    "INVISIBLEPLUS",
    "FUNCTIONAPPLICATION",
    "HANGULFILLER",
    "LANGUAGETAG",
    "CANCELTAG",
    "TAGSPACE",
    "SPACE",
    "ZWSP",
    "ZWNJ",
    "ZWJ",
    "ZWNBSP",
    "BOM",
    "WJ",
    "SHY",
    "NBSP",
    "NNBSP",
    "LRM",
    "RLM",
    "CGJ",
];

/// The ASCII a character name (blanks out, upper case) stands for: one
/// ending `LETTER X`, `SMALL X`, `CAPITAL X` (after any style, `LATIN`,
/// `FULLWIDTH`, `MATHEMATICAL BOLD`, `CIRCLED`, …) or `DIGIT SEVEN`, or
/// the name of ASCII punctuation after any such style.
fn named_ascii(name: &[u8]) -> Option<u8> {
    const DIGITS: [&str; 10] = [
        "ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE",
    ];
    const PUNCTUATION: &[(&str, u8)] = &[
        ("EXCLAMATIONMARK", b'!'),
        ("QUOTATIONMARK", b'"'),
        ("NUMBERSIGN", b'#'),
        ("DOLLARSIGN", b'$'),
        ("PERCENTSIGN", b'%'),
        ("AMPERSAND", b'&'),
        ("APOSTROPHE", b'\''),
        ("LEFTPARENTHESIS", b'('),
        ("RIGHTPARENTHESIS", b')'),
        ("ASTERISK", b'*'),
        ("PLUSSIGN", b'+'),
        ("COMMA", b','),
        ("HYPHEN-MINUS", b'-'),
        ("FULLSTOP", b'.'),
        // Before `COLON` and `SOLIDUS`, which they end with.
        ("SEMICOLON", b';'),
        ("REVERSESOLIDUS", b'\\'),
        ("COLON", b':'),
        ("SOLIDUS", b'/'),
        ("LESS-THANSIGN", b'<'),
        ("EQUALSSIGN", b'='),
        ("GREATER-THANSIGN", b'>'),
        ("QUESTIONMARK", b'?'),
        ("COMMERCIALAT", b'@'),
        ("LEFTSQUAREBRACKET", b'['),
        ("RIGHTSQUAREBRACKET", b']'),
        ("CIRCUMFLEXACCENT", b'^'),
        ("LOWLINE", b'_'),
        ("GRAVEACCENT", b'`'),
        ("LEFTCURLYBRACKET", b'{'),
        ("VERTICALLINE", b'|'),
        ("RIGHTCURLYBRACKET", b'}'),
        ("TILDE", b'~'),
    ];
    let ends = |word: &str| name.ends_with(word.as_bytes());
    if let Some((k, _)) = DIGITS.iter().enumerate().find(|(_, d)| {
        // No string built per digit: `\\N{…}` may be every character.
        name.strip_suffix(d.as_bytes())
            .is_some_and(|head| head.ends_with(b"DIGIT"))
    }) {
        return Some(b'0' + k as u8);
    }
    if let Some((_, b)) = PUNCTUATION.iter().find(|(n, _)| ends(n)) {
        return Some(*b);
    }
    let (&last, head) = name.split_last()?;
    if !last.is_ascii_uppercase() {
        return None;
    }
    // `LATIN SMALL LETTER S`, `MATHEMATICAL BOLD SMALL S`.
    let small = head.ends_with(b"SMALLLETTER") || head.ends_with(b"SMALL");
    let capital = head.ends_with(b"CAPITALLETTER") || head.ends_with(b"CAPITAL");
    match (small, capital) {
        (true, _) => Some(last.to_ascii_lowercase()),
        (_, true) => Some(last),
        _ => None,
    }
}

/// Whether the escape at `hay[i]` writes a byte (`%XX`, `%25XX`, `\\xXX`,
/// octal `\\ooo`, quoted-printable `=XX`) rather than a character.
fn writes_a_byte(hay: &[u8], i: usize, css: bool) -> bool {
    match hay[i] {
        b'\\' if css && hay.get(i + 1).is_some_and(u8::is_ascii_hexdigit) => false,
        b'%' => !matches!(hay.get(i + 1), Some(b'u' | b'U')),
        b'\\' => match hay.get(i + 1) {
            Some(b'x' | b'X') => hay.get(i + 2) != Some(&b'{'),
            Some(b'0'..=b'7') => true,
            _ => false,
        },
        b'=' => true,
        _ => false,
    }
}

/// The escape at `hay[i..]` as [`escape`] reads it, except that the
/// UTF-8 of one character written a byte per escape (`%EF%BC%B1`,
/// `\\xe2\\x80\\x8b`, `=E2=80=8B`) is that character: a fullwidth letter
/// or an invisible character percent-encoded had read as three Latin-1
/// letters and hidden the secret around it (session 11).
fn decoded(hay: &[u8], i: usize, css: bool) -> Option<(Option<char>, usize)> {
    let first = escape(hay, i, css)?;
    let (Some(ch), mut used) = first else {
        return Some(first);
    };
    let n = match u32::from(ch) {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return Some(first),
    };
    if !writes_a_byte(hay, i, css) {
        return Some(first);
    }
    let mut utf8 = [0u8; 4];
    utf8[0] = u32::from(ch) as u8;
    for byte in utf8.iter_mut().take(n).skip(1) {
        // Quoted-printable's soft break may fall between a character's
        // bytes (`quopri` breaks at 76 columns wherever they fall: `=E2=80=`
        // and a line break then `=8B`; session 13's third review).
        while hay[i] == b'='
            && let Some(soft) = soft_break_at(hay, i + used)
        {
            used += soft;
        }
        let j = i + used;
        let next = (j < hay.len() && writes_a_byte(hay, j, css))
            .then(|| escape(hay, j, css))
            .flatten();
        match next {
            Some((Some(c), u)) if (0x80..=0xBF).contains(&u32::from(c)) => {
                *byte = u32::from(c) as u8;
                used += u;
            }
            _ => return Some(first),
        }
    }
    match std::str::from_utf8(&utf8[..n])
        .ok()
        .and_then(|s| s.chars().next())
    {
        Some(c) => Some((Some(c), used)),
        None => Some(first),
    }
}

/// The length of a quoted-printable soft break at `hay[i..]`: `=` and a
/// line break.
fn soft_break_at(hay: &[u8], i: usize) -> Option<usize> {
    match hay.get(i..)? {
        [b'=', b'\r', b'\n', ..] => Some(3),
        [b'=', b'\n', ..] => Some(2),
        _ => None,
    }
}

/// A character reference at `hay[i..]` (`&#115;`, `&#x73;`, `&sol;`; the
/// `;` may be missing, as browsers allow).
fn reference(hay: &[u8], i: usize) -> Option<(Option<char>, usize)> {
    let rest = hay.get(i + 1..)?;
    // Most `&` in an answer begin no reference (a body of nothing but
    // `&` took 16 times as long to read: re-review).
    if !rest.first()?.is_ascii_alphabetic() && rest[0] != b'#' {
        return None;
    }
    let (value, used) = if rest.first() == Some(&b'#') {
        let (radix, start) = match rest.get(1) {
            Some(b'x' | b'X') => (16, 2),
            _ => (10, 1),
        };
        // Leading zeros, as many as a browser reads: any number.
        let zeros = rest[start..].iter().take_while(|d| **d == b'0').count();
        let digits = rest[start + zeros..]
            .iter()
            .take(8)
            .take_while(|d| (**d as char).is_digit(radix))
            .count();
        if zeros + digits == 0 {
            return None;
        }
        let text = std::str::from_utf8(&rest[start + zeros..start + zeros + digits]).ok()?;
        let value = if digits == 0 {
            0
        } else {
            u32::from_str_radix(text, radix).ok()?
        };
        (value, start + zeros + digits)
    } else {
        // The longest name the text begins with: a browser reads `&amp`
        // in `&ampx` too.
        // Only the names with the text's first letter: every `&` in an
        // answer is looked up (comparing it with every name was most of
        // reading prose full of `&`).
        let first = rest[0].to_ascii_lowercase();
        let by_name = &*BY_NAME;
        let from = by_name.partition_point(|(n, _)| n[0] < first);
        let to = by_name.partition_point(|(n, _)| n[0] <= first);
        let &(name, ch) = by_name[from..to]
            .iter()
            .filter(|(n, _)| rest.len() >= n.len() && rest[..n.len()].eq_ignore_ascii_case(n))
            .max_by_key(|(n, _)| n.len())?;
        (u32::from(ch), name.len())
    };
    let semi = usize::from(rest.get(used) == Some(&b';'));
    Some((char::from_u32(value).map(Some)?, 1 + used + semi))
}

/// Bytes that are neither a [blank](super::squeezed::BLANK) nor an
/// escape's first byte.
const ORDINARY: [bool; 256] = {
    let mut t = marked(marked([true; 256], &LEADS, false), b"\\&%=", false);
    // Blanks and control characters.
    let mut k = 0;
    while k < 0x21 {
        t[k] = false;
        k += 1;
    }
    t
};

/// Characters a reader does not see, read as blanks: control characters,
/// no-break, narrow
/// and other Unicode spaces, zero-width ones, soft hyphens, the byte
/// order mark (re-review: inserted between the secret's characters), and
/// the ones a second re-review used: the combining grapheme joiner,
/// Hangul and Mongolian fillers, variation selectors, tag characters;
/// since session 11's second review all of Unicode's default-ignorable
/// code points but U+061C (whose first byte begins every Arabic letter):
/// the supplementary variation selectors and the rest of U+E0000-U+E0FFF,
/// U+FFF0-U+FFF8, the shorthand format controls, the musical beam marks.
fn invisible(ch: char) -> bool {
    matches!(ch, '\0'..=' ' | '\u{a0}' | '\u{ad}' | '\u{34f}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}' | '\u{180b}'..='\u{180f}' | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}' | '\u{205f}'..='\u{206f}' | '\u{3000}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fff8}' | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// The character whose UTF-8 begins at `hay[i]`, and its length.
fn utf8_at(hay: &[u8], i: usize) -> Option<(char, usize)> {
    let n = match hay[i] {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let ch = std::str::from_utf8(hay.get(i..i + n)?)
        .ok()?
        .chars()
        .next()?;
    Some((ch, n))
}

/// The bytes of a text a reader sees, in their case: blanks and the
/// characters [`invisible`] dropped, each kept byte with its offset.
struct Seen {
    bytes: Vec<u8>,
    at: Vec<u32>,
}

impl Seen {
    /// `breaks`: a line break right after `\\` or `=` is kept, so that it
    /// is read as the continued line or soft break it is as written.
    fn of(hay: &[u8], breaks: bool) -> Self {
        let mut seen = Self {
            bytes: Vec::with_capacity(hay.len()),
            at: Vec::with_capacity(hay.len()),
        };
        let mut i = 0;
        while i < hay.len() {
            // A run of ASCII that is not blank, kept whole.
            let run = hay[i..]
                .iter()
                .take_while(|b| (0x21..0x80).contains(*b))
                .count();
            if run > 0 {
                seen.bytes.extend_from_slice(&hay[i..i + run]);
                seen.at.extend(i as u32..(i + run) as u32);
                i += run;
                continue;
            }
            if super::squeezed::BLANK[usize::from(hay[i])] {
                // Here an ASCII one: U+2028 and U+2029 are kept below.
                let kept = line_break_at(hay, i).unwrap_or(0);
                if breaks && kept > 0 && i > 0 && matches!(hay[i - 1], b'\\' | b'=') {
                    seen.bytes.extend_from_slice(&hay[i..i + kept]);
                    seen.at.extend(i as u32..(i + kept) as u32);
                    i += kept;
                } else {
                    i += 1;
                }
                continue;
            }
            let n = match utf8_at(hay, i) {
                // JavaScript continues a line after `\\` at these too.
                Some(('\u{2028}' | '\u{2029}', n)) if breaks && i > 0 && hay[i - 1] == b'\\' => n,
                Some((ch, n)) if invisible(ch) => {
                    i += n;
                    continue;
                }
                Some((_, n)) => n,
                None => 1,
            };
            seen.bytes.extend_from_slice(&hay[i..i + n]);
            seen.at.extend(i as u32..(i + n) as u32);
            i += n;
        }
        seen
    }
}

/// `hay` with the blanks and what a reader does not see taken out, as a
/// text that stands for it: where a blank lies inside an escape that
/// writes another (`%5` and a zero-width space then `Cu0073`, `&am p;`:
/// session 13's second review), for [`decode_once`].
pub(super) fn seen(hay: &[u8], out: &mut Mirrored) {
    let seen = Seen::of(hay, false);
    out.to.clear();
    out.to.extend(seen.at.iter().map(|a| a + 1));
    out.bytes = seen.bytes;
    out.from = seen.at;
}

/// `hay` read through what a reader does not see ([`Seen`]) into `out`
/// (cleared first), mapped back to `hay`: the other readings the scrubber
/// searches. A blank or an invisible character inside an escape (`\\
/// u0051`, `% 4b`, `&#7 5;`, `\\1 13`, `%25 4b`) hid every character of a
/// secret written as escapes from [`read`], and a person still reads them
/// (reviews of session 10). A line break after `\\` or `=` is an escape
/// as written (a continued line, a soft break) and one to see through
/// too, and a text may need one meaning here and the other there
/// (`% 51…U\\` and a line break `iOp…`: the third review), so there are
/// two: `breaks` keeps those line breaks. False, with `out` left empty,
/// where the reading would be [`read`]'s: every escape reads the same
/// through what was dropped as written (most text, where blanks lie
/// between words and not inside escapes: a JSON answer full of `\\"`
/// and `&` took 3.4 times as long to scrub, read three times whole).
pub(super) fn read_through(hay: &[u8], out: &mut Reading, mode: Mode) -> bool {
    let seen = Seen::of(hay, mode.breaks);
    out.text.clear();
    out.from.clear();
    out.to.clear();
    out.tags = false;
    // Both readings drop the same bytes and read the rest the same but
    // at an escape's first byte: where each of those reads alike, so do
    // the readings. Walked as the reading walks, from one escape's end to
    // the next: the second `\\` of `\\\\ b` begins none (checked as one,
    // it read `\\b` through the blank, and every part of a JSON answer
    // with `\\\\` in it was read twice: session 12).
    let mut differs = false;
    let mut k = 0;
    while k < seen.bytes.len() && !differs {
        if !matches!(seen.bytes[k], b'\\' | b'&' | b'%' | b'=') {
            k += 1;
            continue;
        }
        let i = seen.at[k] as usize;
        let through = decoded(&seen.bytes, k, mode.css);
        let spans = through.and_then(|(ch, used)| {
            let last = *seen.at.get(k + used.checked_sub(1)?)? as usize;
            Some((ch, last + 1 - i))
        });
        differs = decoded(hay, i, mode.css) != spans;
        k += through.map_or(1, |(_, used)| used);
    }
    if !differs {
        return false;
    }
    read(&seen.bytes, out, mode);
    for f in &mut out.from {
        *f = seen.at[*f as usize];
    }
    // An escape's end is past its last byte here, and so there.
    for t in &mut out.to {
        *t = seen.at[*t as usize - 1] + 1;
    }
    true
}

/// Read `hay` into `out` (cleared first), escaped tag characters as
/// `mode` says.
pub(super) fn read(hay: &[u8], out: &mut Reading, mode: Mode) {
    out.text.clear();
    out.from.clear();
    out.to.clear();
    out.tags = false;
    out.again = Grammars::default();
    // Whether an escape of another grammar came before: a
    // quoted-printable soft break after one may lie inside it (`\\u0=`
    // and a line break then `073`; `quopri` breaks lines at 76 columns
    // wherever they fall, and an escape's zeros may run on any length
    // before it: session 13's reviews), so the text is worth reading
    // with the soft breaks taken out first.
    let mut introduced = false;
    let mut i = 0;
    while i < hay.len() {
        // A run of bytes read as themselves, copied whole.
        let run = hay[i..]
            .iter()
            .take_while(|b| ORDINARY[usize::from(**b)])
            .count();
        if run > 0 {
            let at = i as u32;
            out.text
                .extend(hay[i..i + run].iter().map(u8::to_ascii_lowercase));
            out.from.extend(at..at + run as u32);
            out.to.extend(at + 1..at + 1 + run as u32);
            i += run;
            continue;
        }
        let b = hay[i];
        if super::squeezed::BLANK[usize::from(b)] {
            i += 1;
            continue;
        }
        if let Some((ch, n)) = utf8_at(hay, i) {
            match looks(ch, false) {
                Looks::Ascii(ascii) => out.push_all(ascii, i, i + n),
                Looks::Itself => {
                    // Copied as it is, lower-casing nothing.
                    let at = i as u32;
                    out.text.extend_from_slice(&hay[i..i + n]);
                    out.from.extend(at..at + n as u32);
                    out.to.extend(at + 1..at + 1 + n as u32);
                }
                Looks::Nothing => {}
            }
            i += n;
            continue;
        }
        let soft = b == b'=' && introduced;
        introduced |= matches!(b, b'\\' | b'%' | b'&');
        let Some((ch, used)) = decoded(hay, i, mode.css) else {
            out.push_all(&[b], i, i + 1);
            i += 1;
            continue;
        };
        out.tags |= ch.and_then(tag).is_some();
        let rewrapped = mode.asks
            && match ch {
                Some(c) => rewraps(hay, i, c, used, mode.css),
                None => soft,
            };
        if let Some(g) = Grammar::of(b, mode.css).filter(|_| rewrapped) {
            out.again.add(g);
        }
        // A character a model reads as ASCII written as an escape
        // (`\\uff53`) reads as that ASCII, as one written as it is.
        match ch.map(|c| (c, looks(c, mode.tags))) {
            Some((_, Looks::Ascii(ascii))) => out.push_all(ascii, i, i + used),
            Some((c, Looks::Itself)) => {
                let mut buf = [0u8; 4];
                out.push_all(c.encode_utf8(&mut buf).as_bytes(), i, i + used);
            }
            Some((_, Looks::Nothing)) | None => {}
        }
        i += used;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_ascii_like_characters_trigger_and_emoji_do_not() {
        for ch in [
            '\u{1bca0}',
            '\u{1bca3}',
            '\u{1d173}',
            '\u{1d17a}',
            '\u{e0100}',
        ] {
            let hay = format!("a{ch}z");
            assert!(has_trigger(hay.as_bytes()), "{ch:?}");
            assert!(!triggers(hay.as_bytes()).is_empty(), "{ch:?}");
            assert_eq!(text(&hay), "az", "{ch:?}");
        }
        // Characters a model reads as ASCII (session 12's review), with
        // lead bytes that no longer trigger whole.
        for (ch, ascii) in [
            ('\u{1d400}', "a"),
            ('\u{1d7d5}', "7"),
            ('\u{1f130}', "a"),
            ('\u{17f}', "s"),
            ('\u{133}', "ij"),
            ('\u{2b0}', "h"),
            ('\u{a7f2}', "c"),
            ('\u{ff0b}', "+"),
            ('\u{207c}', "="),
        ] {
            let hay = format!("a{ch}z");
            assert!(has_trigger(hay.as_bytes()), "{ch:?}");
            assert!(!triggers(hay.as_bytes()).is_empty(), "{ch:?}");
            assert_eq!(text(&hay), format!("a{ascii}z"), "{ch:?}");
        }
        // Emoji, and Polish, Czech, Korean letters: not read for these.
        for ch in [
            '\u{1f600}',
            '\u{1f3f4}',
            '\u{1bc00}',
            'ą',
            'ł',
            'ś',
            'ż',
            'č',
            'ǎ',
            'ʃ',
            '한',
        ] {
            let hay = format!("a{ch}z");
            assert!(!has_trigger(hay.as_bytes()), "{ch:?}");
            assert!(triggers(hay.as_bytes()).is_empty(), "{ch:?}");
            assert_eq!(text(&hay), format!("a{ch}z"), "{ch:?}");
        }
        // 1,295 characters of Unicode 15 and the fullwidth punctuation.
        assert!((1200..1500).contains(&COMPAT.len()), "{}", COMPAT.len());
        // Every one begins with a byte that triggers a reading and that
        // mirroring looks at (U+037E's 0xCD was missing from the second:
        // session 12's third review).
        for (ch, _, _) in COMPAT.iter() {
            let mut utf8 = [0; 4];
            let bytes = ch.encode_utf8(&mut utf8).as_bytes();
            assert!(MIRROR_LEAD[usize::from(bytes[0])], "{ch:?}");
            assert!(!ORDINARY[usize::from(bytes[0])], "{ch:?}");
            assert!(has_trigger(bytes), "{ch:?}");
        }
        // None in the blocks `compat` skips.
        assert!(COMPAT.iter().all(|(ch, _, _)| {
            !('\u{3400}'..'\u{a7f0}').contains(ch) && !('\u{ac00}'..'\u{fb00}').contains(ch)
        }));
    }

    #[test]
    fn has_trigger_is_triggers_for_every_byte() {
        for b in 0..=255u8 {
            let hay = [b'a', b, b'z'];
            assert_eq!(has_trigger(&hay), !triggers(&hay).is_empty(), "{b:#04x}");
        }
    }

    fn text(hay: &str) -> String {
        let mut r = Reading::default();
        read(hay.as_bytes(), &mut r, Mode::default());
        String::from_utf8(r.text).unwrap()
    }

    #[test]
    fn escapes_read_as_their_characters() {
        for (hay, want) in [
            (r"\u0073\u006B-\x41\/b\+", "sk-a/b+"),
            ("&#115;&#x6B;&sol;&plus;&equals;&amp;&#43", "sk/+=&+"),
            ("a%2Fb%252Fc%2b", "a/b/c+"),
            ("k=3Dv=\r\nw=\nx", "k=vwx"),
            ("ab cd\r\nef\tgh", "abcdefgh"),
            // Not escapes: read as they are.
            (
                "a=b&c=d%zz=3d&unknown;\u{e9}",
                "a=b&c=d%zz=3d&unknown;\u{e9}",
            ),
            // A letter after `\\` that begins no escape is itself, as
            // JavaScript reads it; JSON's control escapes are blanks.
            ("\\Q\\w\\E\\8", "qwe8"),
            ("a\\nb\\tc\\r\\nd\\be\\ff\\vg", "abcdefg"),
            ("\u{e4}&#xe4;", "\u{e4}\u{e4}"),
            // Re-review: more escapes, and invisible characters.
            (
                r"\u{73}\u{6B}\163%u006B&#x0000000073;&#000107&ampx",
                "sksksk&x",
            ),
            (
                "s\u{200b}k\u{a0}-\u{ad}a&nbsp;&shy;&#8203;\u{feff}b",
                "sk-ab",
            ),
        ] {
            assert_eq!(text(hay), want, "{hay}");
        }
    }

    fn through(hay: &str) -> String {
        let mut r = Reading::default();
        if !read_through(hay.as_bytes(), &mut r, Mode::default()) {
            // The same as written.
            return text(hay);
        }
        String::from_utf8(r.text).unwrap()
    }

    /// Review (session 10): blanks and invisible characters anywhere in
    /// an escape, and after a shorter escape's end; what each reading
    /// makes of a continued line and a soft break.
    #[test]
    fn escapes_read_through_blanks() {
        for (hay, written, seen) in [
            (
                "\\ u0051% 4b%4 5&#\t89;&# x53;\\x\n45\\\u{200b}/%\u{a0}2b",
                "u0051%4b%45&#89;&#x53;\\x45/%2b",
                "qkeyse/+",
            ),
            ("&#7 5;\\1 13%25 4b", "5;13%4b", "kkk"),
            ("\\ %4b", "k", "%4b"),
            ("a\\\nu0051=\r\n3D", "au00513d", "aq="),
            ("% zz&# ;\\ q", "%zz&#;q", "%zz&#;q"),
        ] {
            assert_eq!(text(hay), written, "{hay:?} as written");
            assert_eq!(through(hay), seen, "{hay:?} read through");
        }
    }

    proptest::proptest! {
        /// A reading through blanks is skipped only where it would be the
        /// written one: text and where each character came from.
        #[test]
        fn a_skipped_reading_is_the_written_one(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "\\", "&", "%", "=", "#", ";", "x", "u", "{", "}", "0", "4", "b", "B",
                    "25", "amp", "sol", " ", "\n", "\r\n", "\t", "\u{200b}", "\u{a0}", "k",
                    "\u{e006b}", "E006B", "DB40", "DC6B", "\u{e0001}",
                ]),
                0..40,
            ),
            breaks in proptest::bool::ANY,
            tags in proptest::bool::ANY,
            css in proptest::bool::ANY,
        ) {
            let hay = parts.concat();
            let mode = Mode { breaks, tags, css, asks: false };
            let mut through = Reading::default();
            if !read_through(hay.as_bytes(), &mut through, mode) {
                let seen = Seen::of(hay.as_bytes(), mode.breaks);
                let (mut written, mut forced) = (Reading::default(), Reading::default());
                read(hay.as_bytes(), &mut written, mode);
                read(&seen.bytes, &mut forced, mode);
                let from: Vec<u32> = forced.from.iter().map(|&f| seen.at[f as usize]).collect();
                proptest::prop_assert_eq!(&forced.text, &written.text, "{:?}", hay);
                proptest::prop_assert_eq!(&from, &written.from, "{:?}", hay);
            }
        }
    }

    /// Tag characters, as written and escaped, are dropped by the plain
    /// readings; escaped ones are read as the ASCII they mirror in tags
    /// mode, and written ones once [mirrored](mirror), before escapes are
    /// read; the other invisible characters of their block (the language
    /// tag, the cancel tag, variation selectors) are nothing every way.
    #[test]
    fn tag_characters_read_as_nothing_or_as_what_they_mirror() {
        let tags = Mode {
            tags: true,
            ..Mode::default()
        };
        let read_as = |hay: &str, mode: Mode, untagged: bool| {
            let mut r = Reading::default();
            if untagged {
                let mut u = Mirrored::default();
                mirror(hay.as_bytes(), &mut u, true);
                read(&u.bytes, &mut r, mode);
                r.map_back(&u);
            } else {
                read(hay.as_bytes(), &mut r, mode);
            }
            r
        };
        let text = |hay: &str, mode: Mode, untagged: bool| {
            String::from_utf8(read_as(hay, mode, untagged).text).unwrap()
        };
        let hay = "a\u{e0053}\\udb40\\udc6b&#xE002D;%F3%A0%80%B1\\U000E0032\\u{e0001}\\u{e007f}\\u{e0100}z";
        let plain = read_as(hay, Mode::default(), false);
        assert_eq!(plain.text, b"az");
        assert!(plain.tags);
        assert_eq!(text(hay, tags, false), "ak-12z");
        assert_eq!(text(hay, tags, true), "ask-12z");
        assert_eq!(text(hay, Mode::default(), true), "asz");
        // Each written tag maps back to its four bytes; the tag space is
        // a blank, dropped as a space is.
        let r = read_as("\u{e0020}x\u{e007e}", tags, true);
        assert_eq!(r.text, b"x~");
        assert_eq!(
            (r.from.as_slice(), r.to.as_slice()),
            (&[4, 5][..], &[5, 9][..])
        );
        let none = "x\u{e007f}\u{e0001}\u{e0100}y";
        assert_eq!(text(none, tags, true), "xy");
        assert!(!read_as(none, tags, true).tags);
        // Tags that spell escapes spell what the escapes write.
        let spelled: String = "%73\\u006B&#x2d;"
            .chars()
            .filter_map(|c| char::from_u32(0xE0000 + u32::from(c)))
            .collect();
        assert_eq!(text(&spelled, Mode::default(), true), "sk-");
        let both = Mirrors {
            tags: true,
            others: true,
        };
        let none = Mirrors::default();
        assert_eq!(
            has_mirrors(spelled.as_bytes()),
            Mirrors {
                others: false,
                ..both
            }
        );
        assert_eq!(has_mirrors("\u{e0001}\u{e007f}\u{1f3f4}".as_bytes()), none);
        assert_eq!(has_mirrors("\u{e0073}\u{ff05}".as_bytes()), both);
        // Fullwidth forms too, but not the punctuation of CJK text.
        assert_eq!(text("％７３＼ｕ００６Ｂ", Mode::default(), true), "sk");
        assert_eq!(has_mirrors("你好，世界：（一）".as_bytes()), none);
        assert_eq!(
            has_mirrors("２０２６年".as_bytes()),
            Mirrors {
                tags: false,
                ..both
            }
        );
        // And what else a model reads as ASCII: `%𝟕𝟑`.
        assert_eq!(text("%\u{1d7d5}\u{1d7d1}", Mode::default(), true), "s");
        assert_eq!(has_mirrors("\u{1f600} “quoted” – ok".as_bytes()), none);
        // Every mirror is what it mirrors.
        for v in (0xE0021..=0xE007E).chain(0xFF01..=0xFF5E) {
            let ch = char::from_u32(v).unwrap();
            let want = tag(ch).unwrap_or_else(|| (v - 0xFEE0) as u8);
            let mut utf8 = [0; 4];
            let mirrored = mirror_at(ch.encode_utf8(&mut utf8).as_bytes(), 0);
            assert_eq!(mirrored.map(|m| m.0), Some(&[want][..]));
        }
        // Through blanks inside an escape, escaped tags read.
        let mut r = Reading::default();
        assert!(read_through(b"s\\u{e00 6b}x", &mut r, tags));
        assert_eq!(r.text, b"skx");
    }

    /// Python's `\\N{…}`: letters, digits and punctuation in any style,
    /// invisible characters, tags; other names read as written.
    #[test]
    fn named_characters_read_as_what_they_name() {
        for (hay, want) in [
            (r"\N{LATIN SMALL LETTER S}\N{latin capital letter k}", "sk"),
            (
                r"\N{FULLWIDTH DIGIT SEVEN}\N{MATHEMATICAL BOLD CAPITAL Q}",
                "7q",
            ),
            (
                r"\N{MATHEMATICAL SANS-SERIF BOLD ITALIC SMALL Z}\N{DIGIT ZERO}",
                "z0",
            ),
            (
                r"\N{PLUS SIGN}\N{SEMICOLON}\N{COLON}\N{REVERSE SOLIDUS}\N{SOLIDUS}",
                "+;:\\/",
            ),
            (r"a\N{ZERO WIDTH SPACE}b\N{ZWSP}c\N{SOFT HYPHEN}d", "abcd"),
            (
                r"\N{CIRCLED LATIN CAPITAL LETTER A}\N{FULLWIDTH EQUALS SIGN}",
                "a=",
            ),
            // Any name in Unicode's list (session 13), read as the
            // character is; Perl's code points.
            (r"\N{GREEK SMALL LETTER ALPHA}", "α"),
            (
                r"\N{KELVIN SIGN}\N{superscript two}\N{ROMAN NUMERAL ONE}",
                "k2i",
            ),
            (
                r"\N{PLANCK CONSTANT}\N{SCRIPT SMALL L}\N{U+73}\N{U+FF4B}",
                "hlsk",
            ),
            (r"\N{EN SPACE}a\N{LATIN SMALL LETTER E WITH ACUTE}", "aé"),
            (r"\N{NO SUCH CHARACTER}", r"\n{nosuchcharacter}"),
            (r"\N{LATIN SMALL LETTER S", r"\n{latinsmallletters"),
        ] {
            assert_eq!(text(hay), want, "{hay}");
        }
        let mut r = Reading::default();
        let tags = Mode {
            tags: true,
            ..Mode::default()
        };
        read(
            br"\N{TAG LATIN SMALL LETTER S}\N{TAG DIGIT ONE}",
            &mut r,
            tags,
        );
        assert_eq!((r.text.as_slice(), r.tags), (&b"s1"[..], true));
    }

    /// CSS's escapes: one to six hex digits and a blank after them; what
    /// CSS reads as U+FFFD.
    #[test]
    fn css_escapes_read_as_css_reads_them() {
        let css = Mode {
            css: true,
            ..Mode::default()
        };
        for (hay, want) in [
            ("sk\\2d live\\2D x", "sk-live-x"),
            ("\\73\\6b\\00002d\\0000411", "sk-a1"),
            ("a\\2d\r\nb\\2d\tc", "a-b-c"),
            ("\\0 \\d800 \\110000 z", "\u{fffd}\u{fffd}\u{fffd}z"),
            ("\\qq\\-\\u0073", "qq-u0073"),
            // Not hex: the character itself, as CSS reads it (session
            // 12's third review).
            ("Q\\x7A\\t\\v", "qx7atv"),
        ] {
            let mut r = Reading::default();
            read(hay.as_bytes(), &mut r, css);
            assert_eq!(String::from_utf8(r.text).unwrap(), want, "{hay}");
        }
        assert!(has_css_escape(b"a\\2d"));
        assert!(!has_css_escape(b"a\\n\\\"\\u"));
        // As C reads `\\2d`: an octal 2 (nothing) and `d`.
        assert_eq!(text("sk\\2d live"), "skdlive");
    }

    #[test]
    fn read_through_maps_back_to_what_it_was_read_from() {
        let hay = b"x% 4\t b \\u00 41";
        let mut r = Reading::default();
        assert!(read_through(hay, &mut r, Mode::default()));
        assert_eq!(r.text, b"xka");
        assert_eq!(r.from, [0, 1, 8]);
        assert_eq!(r.to, [1, 7, hay.len() as u32]);
    }

    #[test]
    fn each_byte_maps_back_to_what_it_was_read_from() {
        let hay = b"a \\u0042%43";
        let mut r = Reading::default();
        read(hay, &mut r, Mode::default());
        assert_eq!(r.text, b"abc");
        assert_eq!(r.from, [0, 2, 8]);
        assert_eq!(r.to, [1, 8, 11]);
    }

    /// Session 13: escapes of one grammar decoded once, all else as
    /// written, mapped back; which grammars wrote the start of an escape
    /// that writes by code or name.
    #[test]
    fn escapes_escaped_again_are_decoded_once() {
        use Grammar::*;
        let again = |hay: &[u8]| {
            let mut r = Reading::default();
            let asks = Mode {
                asks: true,
                ..Mode::default()
            };
            read(hay, &mut r, asks);
            r.again.iter().collect::<Vec<_>>()
        };
        let once = |hay: &[u8], g: Grammar| {
            let mut u = Mirrored::default();
            decode_once(hay, &mut u, Grammars::one(g));
            (String::from_utf8(u.bytes.clone()).unwrap(), u)
        };
        let hay = br"A \\u0073&amp;#115;%5Cx73+";
        assert_eq!(again(hay), [Backslash, Percent, Reference]);
        let (text, u) = once(hay, Backslash);
        assert_eq!(text, r"A \u0073&amp;#115;%5Cx73+");
        // `\\` stands for its two bytes.
        assert_eq!((u.from[2], u.to[2]), (2, 4));
        let (text, u) = once(hay, Reference);
        assert_eq!(text, r"A \\u0073&#115;%5Cx73+");
        // `&amp;` for its five.
        assert_eq!((u.from[9], u.to[9]), (9, 14));
        assert_eq!((u.from[10], u.to[10]), (14, 15));
        // A form's `+` is a space.
        assert_eq!(once(hay, Percent).0, r"A \\u0073&amp;#115;\x73 ");
        // As CSS reads `\`.
        assert_eq!(once(br"\5c u0073", Css).0, r"\u0073");
        assert_eq!(again(br"\5c u0073"), []);
        let mut r = Reading::default();
        let css = Mode {
            css: true,
            asks: true,
            ..Mode::default()
        };
        read(br"\5c u0073", &mut r, css);
        assert_eq!(r.again.iter().collect::<Vec<_>>(), [Css]);
        // A soft break inside an escape: quoted-printable's alone.
        let split = b"&#8=\n1;";
        assert_eq!(again(split), [Printable]);
        assert_eq!(once(split, Printable).0, "&#81;");
        // What reads as nothing is dropped; a lone `\` at the end kept.
        assert_eq!(once(br"a\N{ZWSP}c%5C", Backslash).0, "ac%5C");
        assert_eq!(once(br"a\N{ZWSP}c%5C", Percent).0, r"a\N{ZWSP}c\");
        // Nothing rewraps: `\"` writes a quote, `%41` a letter.
        assert_eq!(again(br#"x\"y %41 \u00e9 & ="#), []);
        for hay in [
            &br"a \\ b"[..],
            br"\\w+\\s*",
            br#"\\\"q\\\""#,
            b"&amp;&amp; 1",
            b"100%25 x",
            // Windows paths and regular expressions in JSON (session 13).
            br"C:\\Users\\x\\new\\tab",
            br"^\\d+\\b\\x",
            // Cut by the end: the next frame reads it with what follows.
            br"\\u00",
        ] {
            assert_eq!(again(hay), [], "{}", String::from_utf8_lossy(hay));
        }
        // Through blanks the outer escaper wrote too (the review's F).
        for hay in [
            &br"\\\\u0073"[..],
            b"%5C%75%30%30%37%33",
            b"&amp;#115;",
            br"\\2d ",
            b"%255Cu0073",
            br"\\\tu0073",
            b"%5C%20u0073",
            b"%5C+u0073",
            "\\\\\u{200b}u0073".as_bytes(),
        ] {
            assert_ne!(again(hay), [], "{}", String::from_utf8_lossy(hay));
        }
    }

    #[test]
    fn a_cut_escape_is_found_back_through_its_zeros() {
        assert_eq!(cut_escape(b"ab&#x0000"), Some(2));
        assert_eq!(cut_escape(b"ab&#X00 00\xe2\x80\x8b004"), Some(2));
        assert_eq!(cut_escape(b"ab&#0000"), Some(2));
        assert_eq!(cut_escape(b"ab\\u{0000"), Some(2));
        assert_eq!(cut_escape(b"ab\\U { 00"), Some(2));
        assert_eq!(cut_escape(b"ab&#x0000;"), None);
        assert_eq!(cut_escape(b"ab0000"), None);
        assert_eq!(cut_escape(b"abx0000"), None);
        assert_eq!(cut_escape(b"\\{00"), None);
        assert_eq!(cut_escape(b""), None);
        assert_eq!(zeros_after(b"&#x000041;", 0), 7);
        assert_eq!(zeros_after(b"a\\u{00}", 1), 5);
        assert_eq!(zeros_after(b"&#0", 0), 3);
        assert_eq!(zeros_after(b"&#x41", 0), 0);
        assert_eq!(zeros_after(b"&amp;", 0), 0);
        assert_eq!(zeros_after(b"\\o{0007", 0), 6);
        assert_eq!(cut_escape(b"ab\\o{000"), Some(2));
        assert_eq!(cut_escape(b"ab\\u{000%"), Some(2));
        assert_eq!(cut_escape(b"ab\\u{000%3"), Some(2));
        assert_eq!(cut_escape(b"ab\\u{000%%"), None);
        // Through what reads as nothing, and mirrors (session 12).
        let wide = "\u{ff06}\u{ff03}\u{ff58}\u{ff10}0\u{200b}0";
        assert_eq!(zeros_after(wide.as_bytes(), 0), wide.len());
        assert_eq!(zeros_after("&#x\u{200b}00".as_bytes(), 0), 8);
        // Escaped again (session 13), squeezed text being lower case.
        assert_eq!(zeros_after(b"%5cu{000", 0), 8);
        assert_eq!(zeros_after(b"\\\\u{00}", 0), 6);
        assert_eq!(zeros_after(b"&amp;#x0", 0), 8);
        assert_eq!(zeros_after(b"&amp;#0", 0), 7);
        assert_eq!(zeros_after(b"%5c%75%7b%30%300", 0), 16);
        assert_eq!(zeros_after(b"&#92;u{0", 0), 8);
        assert_eq!(zeros_after(b"%5cu0073", 0), 0);
        // A `\\u{…}` that writes a zero is still a zero's escape with
        // zeros of its own.
        assert_eq!(zeros_after(b"\\u{0030}", 0), 5);
        // Windows reach past the zeros.
        let long = [&b"&#x"[..], &[b'0'; 500], b"41;", &[b'a'; 600]].concat();
        assert_eq!(
            windows(&long, &triggers(&long), 3),
            vec![0..3 + 500 + ESCAPE_WIDTH + 3]
        );
    }

    #[test]
    fn windows_are_what_lies_near_an_escape() {
        let hay = b"0123456789%123456789012345678=0123456789";
        let at = triggers(hay);
        assert_eq!(at, [10, 29]);
        assert_eq!(windows(hay, &at, 3), vec![7..hay.len()]);
        let far = [&b"%"[..], &[b'a'; 200], b"="].concat();
        assert_eq!(
            windows(&far, &triggers(&far), 3),
            [0..ESCAPE_WIDTH + 3, 198..202]
        );
        assert!(triggers(b"plain text, no escape").is_empty());
    }

    /// Bounded: no escape reads past the end, whatever is cut off.
    #[test]
    fn cut_escapes_are_read_as_bytes() {
        for hay in [
            "\\", "\\u00", "%2", "&#", "&#x", "=", "=4", "&am", "%25", "%252",
        ] {
            let mut r = Reading::default();
            read(hay.as_bytes(), &mut r, Mode::default());
            assert_eq!(r.text.len(), r.from.len());
            assert!(r.to.iter().all(|&t| t as usize <= hay.len()), "{hay}");
        }
    }
}
