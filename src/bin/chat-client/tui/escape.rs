//! The one escaping rule for text from someone else: what is shown on the screen and
//! printed on stdout, and what the input line refuses to take.

/// Whether `c` is escaped by [`one_line`]: control characters (C0, DEL, C1), the line
/// and paragraph separators, and the bidirectional controls.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// The text with control characters, line and paragraph separators and bidirectional
/// controls escaped (`\u{1b}`), so a message is always one line, shows what it says,
/// and cannot drive the terminal or reorder what is around it.
pub fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if needs_escape(c) {
            line.extend(c.escape_unicode());
        } else {
            line.push(c);
        }
    }
    line
}
