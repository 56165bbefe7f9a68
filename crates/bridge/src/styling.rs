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
pub fn html_to_styled(html: &str) -> String {
    let doc = Html::parse(html);
    let mut out = String::new();
    for node in doc.children() {
        render(&node, &mut out, false);
    }
    tidy(&out)
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

/// XEP-0393 styled text as Matrix HTML, or `None` when it has no styling (then the plain body
/// says it all).
pub fn styled_to_html(text: &str) -> Option<String> {
    let mut html = String::with_capacity(text.len() + 32);
    let styled = blocks(text, &mut html);
    styled.then_some(html)
}

/// Renders the block structure; returns whether any styling was found.
fn blocks(text: &str, html: &mut String) -> bool {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut styled = false;
    let mut i = 0;
    let mut first = true;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("```") {
            // A preformatted block, to its closing line or the end of the message.
            let end = lines[i + 1..]
                .iter()
                .position(|l| *l == "```")
                .map_or(lines.len(), |p| i + 1 + p);
            if !first {
                html.push_str("<br>");
            }
            html.push_str("<pre><code>");
            html.push_str(&escape(&lines[i + 1..end].join("\n")));
            html.push_str("</code></pre>");
            styled = true;
            first = true;
            i = end + 1;
            continue;
        }
        if line.starts_with('>') {
            let end = lines[i..]
                .iter()
                .position(|l| !l.starts_with('>'))
                .map_or(lines.len(), |p| i + p);
            let quoted: Vec<&str> = lines[i..end]
                .iter()
                .map(|l| {
                    let l = &l[1..];
                    l.strip_prefix(' ').unwrap_or(l)
                })
                .collect();
            html.push_str("<blockquote>");
            blocks(&quoted.join("\n"), html);
            html.push_str("</blockquote>");
            styled = true;
            first = true;
            i = end;
            continue;
        }
        if !first {
            html.push_str("<br>");
        }
        styled |= spans(line, html);
        first = false;
        i += 1;
    }
    styled
}

/// Renders one line's spans; returns whether any was found.
fn spans(line: &str, html: &mut String) -> bool {
    let chars: Vec<char> = line.chars().collect();
    let mut styled = false;
    let mut plain = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let tag = match c {
            '*' => Some("strong"),
            '_' => Some("em"),
            '~' => Some("del"),
            '`' => Some("code"),
            _ => None,
        };
        let opens = tag.is_some()
            && (i == 0 || chars[i - 1].is_whitespace())
            && chars
                .get(i + 1)
                .is_some_and(|n| !n.is_whitespace() && *n != c);
        if let (Some(tag), true) = (tag, opens) {
            let close =
                (i + 2..chars.len()).find(|&j| chars[j] == c && !chars[j - 1].is_whitespace());
            if let Some(j) = close {
                html.push_str(&escape(&plain));
                plain.clear();
                let inner: String = chars[i + 1..j].iter().collect();
                let _ = write!(html, "<{tag}>");
                if tag == "code" {
                    html.push_str(&escape(&inner));
                } else {
                    spans(&inner, html);
                }
                let _ = write!(html, "</{tag}>");
                styled = true;
                i = j + 1;
                continue;
            }
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
