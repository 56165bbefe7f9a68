//! Formatting both ways: Matrix HTML (`formatted_body`, parsed with ruma-html, html5ever
//! underneath) as XEP-0393 message styling, and styling as Matrix HTML. Plain functions, no
//! I/O.
//!
//! XEP-0393 in short: `*strong*`, `_emphasis_`, `~strike~` and `` `code` `` spans inside one
//! line (the opening mark at the start of the line or after whitespace and followed by
//! non-whitespace, the closing mark after non-whitespace); ```` ``` ```` lines around a
//! preformatted block; `>` at the start of a line for a quote.

use std::fmt::Write;

use ruma_html::{Html, NodeData, NodeRef};

/// Matrix HTML as styled plain text: emphasis as XEP-0393 marks, links as `text (url)`, lists
/// as bullets, quotes as `> ` lines, the reply fallback (`<mx-reply>`) dropped.
pub fn html_to_styled(html: &str) -> Option<String> {
    if nesting(html) > MAX_HTML_DEPTH {
        return None;
    }
    let doc = Html::parse(html);
    let mut out = String::new();
    for node in doc.children() {
        render(&node, &mut out, false);
    }
    Some(tidy(&out))
}

/// HTML nested deeper than this is not rendered (the caller keeps the plain body): rendering
/// and the parser's tree both recurse per level.
const MAX_HTML_DEPTH: usize = 64;

/// How deep the tags of `html` nest, counted without parsing (void and self-closed tags do not
/// nest; an unclosed tag counts as open).
fn nesting(html: &str) -> usize {
    const VOID: [&str; 6] = ["br", "img", "hr", "input", "meta", "wbr"];
    let (mut depth, mut max) = (0usize, 0usize);
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        if let Some(closing) = tag.strip_prefix('/') {
            if closing.starts_with(|c: char| c.is_ascii_alphabetic()) {
                depth = depth.saturating_sub(1);
            }
        } else if tag.starts_with(|c: char| c.is_ascii_alphabetic()) {
            let name: String = tag
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            if !tag.ends_with('/') && !VOID.contains(&name.as_str()) {
                depth += 1;
                max = max.max(depth);
            }
        }
        rest = &rest[end.min(rest.len())..];
    }
    max
}

fn render_children(node: &NodeRef, out: &mut String, pre: bool) {
    for child in node.children() {
        render(&child, out, pre);
    }
}

fn render(node: &NodeRef, out: &mut String, pre: bool) {
    match node.data() {
        NodeData::Text(text) => {
            let text = text.borrow();
            if pre {
                out.push_str(&text);
            } else if !text.trim().is_empty() || !out.ends_with(['\n', ' ']) && !out.is_empty() {
                // Source line breaks are spaces in HTML.
                out.push_str(&text.replace('\n', " "));
            }
        }
        NodeData::Element(el) => {
            let name: &str = &el.name.local;
            let attr = |key: &str| {
                el.attrs
                    .borrow()
                    .iter()
                    .find(|a| &*a.name.local == key)
                    .map(|a| a.value.to_string())
            };
            match name {
                "mx-reply" | "script" | "style" => {}
                "br" => out.push('\n'),
                "strong" | "b" => span(node, out, "*"),
                "em" | "i" => span(node, out, "_"),
                "del" | "s" | "strike" => span(node, out, "~"),
                "code" if !pre => span_plain(node, out),
                "pre" => {
                    block_start(out);
                    out.push_str("```\n");
                    let mut inner = String::new();
                    render_children(node, &mut inner, true);
                    out.push_str(inner.trim_end_matches('\n'));
                    out.push_str("\n```\n");
                }
                "blockquote" => {
                    block_start(out);
                    let mut inner = String::new();
                    render_children(node, &mut inner, pre);
                    for line in tidy(&inner).lines() {
                        out.push('>');
                        if !line.is_empty() {
                            out.push(' ');
                            out.push_str(line);
                        }
                        out.push('\n');
                    }
                }
                "p" | "div" | "ul" | "ol" | "table" | "tr" => {
                    block_start(out);
                    render_children(node, out, pre);
                    block_start(out);
                }
                "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                    block_start(out);
                    span(node, out, "*");
                    out.push('\n');
                }
                "li" => {
                    block_start(out);
                    let ordered = node
                        .parent()
                        .and_then(|p| p.as_element().map(|e| &*e.name.local == "ol"))
                        .unwrap_or(false);
                    if ordered {
                        let n = node
                            .parent()
                            .map(|p| {
                                p.children()
                                    .filter(|c| c.as_element().is_some())
                                    .take_while(|c| !std::ptr::eq(c.data(), node.data()))
                                    .count()
                            })
                            .unwrap_or(0);
                        let _ = write!(out, "{}. ", n + 1);
                    } else {
                        out.push_str("• ");
                    }
                    render_children(node, out, pre);
                    block_start(out);
                }
                "a" => {
                    let mut text = String::new();
                    render_children(node, &mut text, pre);
                    out.push_str(&text);
                    if let Some(href) = attr("href")
                        && href != text
                        && !href.starts_with("https://matrix.to/")
                    {
                        let _ = write!(out, " ({href})");
                    }
                }
                "img" => {
                    if let Some(alt) = attr("alt") {
                        out.push_str(&alt);
                    }
                }
                _ => render_children(node, out, pre),
            }
        }
        NodeData::Document | NodeData::Other => render_children(node, out, pre),
    }
}

/// Starts a new line unless at one.
fn block_start(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// Wraps the node's text in `mark`, keeping spaces outside the marks (a mark next to a space
/// is not styling).
fn span(node: &NodeRef, out: &mut String, mark: &str) {
    let mut inner = String::new();
    render_children(node, &mut inner, false);
    wrap(out, &inner, mark);
}

/// `` `code` ``: the text as is, no styling inside.
fn span_plain(node: &NodeRef, out: &mut String) {
    let mut inner = String::new();
    render_children(node, &mut inner, true);
    wrap(out, &inner, "`");
}

fn wrap(out: &mut String, inner: &str, mark: &str) {
    let trimmed = inner.trim();
    if trimmed.is_empty() || trimmed.contains('\n') {
        out.push_str(inner);
        return;
    }
    let lead = &inner[..inner.len() - inner.trim_start().len()];
    let trail = &inner[inner.trim_end().len()..];
    let _ = write!(out, "{lead}{mark}{trimmed}{mark}{trail}");
}

/// Trailing spaces and blank lines dropped, at most one blank line in a row.
fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// Quote levels and span nesting beyond these stay plain text: hostile input must not recurse
/// or loop without bound.
const MAX_QUOTE_DEPTH: usize = 16;
const MAX_SPAN_DEPTH: usize = 8;

/// XEP-0393 styled text as Matrix HTML, or `None` when it has no styling (then the plain body
/// says it all).
pub fn styled_to_html(text: &str) -> Option<String> {
    let mut html = String::with_capacity(text.len() + 32);
    let styled = blocks(text, &mut html);
    styled.then_some(html)
}

/// A line's quote depth (`>` marks, each optionally followed by a space, at most
/// [`MAX_QUOTE_DEPTH`]) and the rest of it.
fn quote_depth(line: &str) -> (usize, &str) {
    let mut depth = 0;
    let mut rest = line;
    while depth < MAX_QUOTE_DEPTH
        && let Some(r) = rest.strip_prefix('>')
    {
        depth += 1;
        rest = r.strip_prefix(' ').unwrap_or(r);
    }
    (depth, rest)
}

/// Renders the block structure, line by line (quotes opened and closed as the depth changes,
/// no recursion); returns whether any styling was found.
fn blocks(text: &str, html: &mut String) -> bool {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut styled = false;
    let mut open = 0;
    let mut first = true;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("```") {
            // A preformatted block, to its closing line or the end of the message.
            let end = lines[i + 1..]
                .iter()
                .position(|l| *l == "```")
                .map_or(lines.len(), |p| i + 1 + p);
            for _ in 0..open {
                html.push_str("</blockquote>");
            }
            if open > 0 {
                first = true;
            }
            open = 0;
            if !first {
                html.push_str("<br>");
            }
            html.push_str("<pre><code>");
            html.push_str(&escape(&lines[(i + 1).min(end)..end].join("\n")));
            html.push_str("</code></pre>");
            styled = true;
            first = true;
            i = end + 1;
            continue;
        }
        let (depth, rest) = quote_depth(line);
        if depth != open {
            while open > depth {
                html.push_str("</blockquote>");
                open -= 1;
            }
            while open < depth {
                html.push_str("<blockquote>");
                open += 1;
            }
            styled = true;
            first = true;
        }
        if !first {
            html.push_str("<br>");
        }
        styled |= spans(rest, html, 0);
        first = false;
        i += 1;
    }
    for _ in 0..open {
        html.push_str("</blockquote>");
    }
    styled
}

/// For each position of `chars`, the index of the next closing `mark` at or after it (a
/// `mark` not preceded by whitespace), so finding a span's end is one lookup.
fn next_closers(chars: &[char], mark: char) -> Vec<Option<usize>> {
    let mut next = vec![None; chars.len() + 1];
    for j in (0..chars.len()).rev() {
        let closes = chars[j] == mark && j > 0 && !chars[j - 1].is_whitespace();
        next[j] = if closes { Some(j) } else { next[j + 1] };
    }
    next
}

/// Renders one line's spans; returns whether any was found.
fn spans(line: &str, html: &mut String, depth: usize) -> bool {
    let chars: Vec<char> = line.chars().collect();
    let marks = [('*', "strong"), ('_', "em"), ('~', "del"), ('`', "code")];
    let closers: Vec<Vec<Option<usize>>> = if depth < MAX_SPAN_DEPTH {
        marks
            .iter()
            .map(|(m, _)| next_closers(&chars, *m))
            .collect()
    } else {
        Vec::new()
    };
    let mut styled = false;
    let mut plain = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let mark = marks.iter().position(|(m, _)| *m == c);
        let opens = (i == 0 || chars[i - 1].is_whitespace())
            && chars
                .get(i + 1)
                .is_some_and(|n| !n.is_whitespace() && *n != c);
        let close = match (mark, opens) {
            (Some(k), true) if !closers.is_empty() => closers[k].get(i + 2).copied().flatten(),
            _ => None,
        };
        if let (Some(k), Some(j)) = (mark, close) {
            let tag = marks[k].1;
            html.push_str(&escape(&plain));
            plain.clear();
            let inner: String = chars[i + 1..j].iter().collect();
            let _ = write!(html, "<{tag}>");
            if tag == "code" {
                html.push_str(&escape(&inner));
            } else {
                spans(&inner, html, depth + 1);
            }
            let _ = write!(html, "</{tag}>");
            styled = true;
            i = j + 1;
            continue;
        }
        plain.push(c);
        i += 1;
    }
    html.push_str(&escape(&plain));
    styled
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_html_becomes_styling() {
        let html_to_styled = |h: &str| html_to_styled(h).unwrap();
        assert_eq!(
            html_to_styled(
                "<mx-reply><blockquote>old</blockquote></mx-reply><p><strong>bold</strong> &amp; \
                 <em>it </em><del>gone</del> <code>a*b</code> <a href=\"https://x.org\">x</a></p>\
                 <ul><li>one</li><li>two</li></ul><ol><li>first</li><li>second</li></ol>\
                 a<br/>b &lt;3 &#x263A;"
            ),
            "*bold* & _it_ ~gone~ `a*b` x (https://x.org)\n• one\n• two\n1. first\n2. second\na\nb <3 ☺"
        );
        assert_eq!(
            html_to_styled(
                "<blockquote><p>quoted</p><p>twice</p></blockquote><pre><code>let x = 1;\n</code></pre>"
            ),
            "> quoted\n> twice\n```\nlet x = 1;\n```"
        );
        assert_eq!(
            html_to_styled("<a href=\"https://matrix.to/#/@bob:x\">Bob</a>: hi"),
            "Bob: hi",
            "a mention is its name"
        );
        assert_eq!(html_to_styled("<p>unclosed <b>tag"), "unclosed *tag*");
    }

    #[test]
    fn styling_becomes_matrix_html() {
        assert_eq!(
            styled_to_html("*bold* and _it_ ~no~ `a*b*c` <tag> & x"),
            Some(
                "<strong>bold</strong> and <em>it</em> <del>no</del> <code>a*b*c</code> \
                 &lt;tag&gt; &amp; x"
                    .into()
            )
        );
        assert_eq!(
            styled_to_html("> quoted\n>> deeper\nafter\n```\n*not bold*\n```"),
            Some(
                "<blockquote>quoted<blockquote>deeper</blockquote></blockquote>after<br>\
                 <pre><code>*not bold*</code></pre>"
                    .into()
            )
        );
        assert_eq!(
            styled_to_html("*strong _and emphasis_*"),
            Some("<strong>strong <em>and emphasis</em></strong>".into())
        );
    }

    #[test]
    fn hostile_input_neither_recurses_nor_loops_without_bound() {
        let deep_quote = ">".repeat(100_000);
        let html = styled_to_html(&deep_quote).unwrap();
        assert_eq!(html.matches("<blockquote>").count(), MAX_QUOTE_DEPTH);
        let openers = "a *a ".repeat(20_000) + "a*";
        let t = std::time::Instant::now();
        let _ = styled_to_html(&openers);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "linear, not quadratic"
        );
        let nested = "*_~".repeat(10_000) + "x" + &"~_*".repeat(10_000);
        assert!(styled_to_html(&nested).is_some());
        assert_eq!(
            html_to_styled(&"<div>".repeat(20_000)),
            None,
            "too deep: the plain body"
        );
        assert!(
            html_to_styled(&"<br>".repeat(20_000)).is_some(),
            "void tags do not nest"
        );
    }

    #[test]
    fn what_is_not_styling_stays_plain() {
        for text in [
            "2 * 3 * 4",
            "snake_case_name",
            "a* not* b",
            "**",
            "* bullet",
            "*open only",
            "a_b_",
            "plain text, nothing to see",
            "*not\nacross lines*",
        ] {
            assert_eq!(styled_to_html(text), None, "{text}");
        }
    }
}
