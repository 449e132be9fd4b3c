//! `GET /`: the status page for people — token state, what to do, the Re-authorize progress and
//! the spool's messages with their buttons. Shown to loopback clients only (it lists senders and
//! recipients). All markup is written with `html!`, which escapes every value put into it, so
//! text from mail or from error messages can never become markup.

use std::fmt;
use std::time::{Instant, SystemTime};

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::actions::LoginView;
use super::http::{Conn, Ctx, StatusContext, spool_job};
use crate::auth::{TokenState, TokenStatus, advice};
use crate::spool::{QueueCounts, Record, State as MailState};

/// The page lists this many messages; the CLI lists them all.
const ROWS: usize = 500;

const STYLE: &str = "body{font-family:sans-serif;max-width:70em;margin:2em auto}\
     .ok{color:#070}.bad{color:#a00}table{border-collapse:collapse}\
     td,th{border:1px solid #ccc;padding:.2em .5em;font-size:90%}#login{background:#ffd;padding:1em}";

/// HTML that is safe to send: built by `html!` from a template and escaped values, or a
/// literal of this file.
#[derive(Debug, Default)]
struct Markup(String);

impl Markup {
    fn literal(html: &'static str) -> Markup {
        Markup(html.to_string())
    }
}

impl FromIterator<Markup> for Markup {
    fn from_iter<I: IntoIterator<Item = Markup>>(parts: I) -> Markup {
        Markup(parts.into_iter().map(|m| m.0).collect())
    }
}

/// A value `html!` can put into a template: text is escaped, `Markup` goes in as it is.
trait ToHtml {
    fn write_html(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl ToHtml for str {
    fn write_html(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        out.write_str(&escape(self))
    }
}

impl ToHtml for String {
    fn write_html(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_str().write_html(out)
    }
}

impl ToHtml for Markup {
    fn write_html(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        out.write_str(&self.0)
    }
}

impl<T: ToHtml + ?Sized> ToHtml for &T {
    fn write_html(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).write_html(out)
    }
}

/// Numbers are digits only: nothing to escape.
macro_rules! numbers_to_html {
    ($($t:ty),*) => {$(
        impl ToHtml for $t {
            fn write_html(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, out)
            }
        }
    )*};
}
numbers_to_html!(u32, u64, usize);

/// Formats one `html!` value through `ToHtml`.
struct Escaped<'a>(&'a dyn ToHtml);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write_html(out)
    }
}

/// `html!("<p>{a}</p>", "<p>{b}</p>"; a = x, b = y)`: the template pieces joined, each `{name}`
/// replaced by its value escaped (`Markup` values go in as they are). The template goes through
/// `concat!`, and a format string made by a macro cannot capture variables by name, so a
/// `{name}` without a `name = ...` below is a compile error, never unescaped text.
macro_rules! html {
    ($($piece:literal),+ $(; $($name:ident = $value:expr),* $(,)?)?) => {
        Markup(format!(concat!($($piece),+) $($(, $name = Escaped(&$value))*)?))
    };
}

/// The page lists senders and recipients, so it is shown to local clients only; `/status` and
/// `/metrics` carry counts alone and may be scraped from elsewhere.
pub(super) async fn page(State(ctx): State<Ctx>, ConnectInfo(conn): ConnectInfo<Conn>) -> Response {
    if !conn.peer.ip().to_canonical().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "the status page is shown on this host only; /status and /metrics are open\n",
        )
            .into_response();
    }
    let (counts, records) = match spool_job(&ctx, |spool| {
        spool
            .list_all()
            .map(|r| (QueueCounts::of(&r, SystemTime::now()), r))
    })
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let login = ctx.login.lock().expect("login lock").clone();
    Html(render_page(&ctx, &counts, &records, &login).0).into_response()
}

fn render_page(
    ctx: &StatusContext,
    counts: &QueueCounts,
    records: &[Record],
    login: &LoginView,
) -> Markup {
    let token = ctx.tokens.status();
    let login = current_login(login, token.state);
    // While a code is out the page reloads itself, so it shows the sign-in once it is done.
    let refresh = match login {
        LoginView::Waiting(..) => Markup::literal("<meta http-equiv=\"refresh\" content=\"5\">"),
        _ => Markup::default(),
    };
    let held = records
        .iter()
        .filter(|r| r.state == MailState::Held)
        .count();
    html!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">"#,
        r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#,
        r#"{refresh}<title>graph-relay</title><style>{style}</style></head>"#,
        r#"<body><h1>graph-relay</h1>{token}{reach}{login}{queue}<!-- held={held} --></body></html>"#;
        refresh = refresh,
        style = Markup::literal(STYLE),
        token = token_section(ctx, &token),
        reach = reach_section(ctx, records),
        login = login_section(login),
        queue = queue_section(counts, records),
        held = held,
    )
}

/// A finished login's message only makes sense while its outcome still holds.
fn current_login(login: &LoginView, state: TokenState) -> &LoginView {
    match login {
        LoginView::Done if state != TokenState::Valid => &LoginView::Idle,
        LoginView::Failed(_) if state == TokenState::Valid => &LoginView::Idle,
        LoginView::Waiting(_, until) if Instant::now() >= *until => &LoginView::Idle,
        other => other,
    }
}

/// The token state, why it is so and what to do about it, and the Re-authorize button.
fn token_section(ctx: &StatusContext, token: &TokenStatus) -> Markup {
    let (headline, class) = match token.state {
        TokenState::Valid => ("Microsoft sign-in works. Mail is being delivered.", "ok"),
        TokenState::ReauthRequired => (
            "Microsoft sign-in needs attention. Mail is accepted and held, not lost.",
            "bad",
        ),
        TokenState::Missing => (
            "No Microsoft credentials are configured. Mail is accepted and held.",
            "bad",
        ),
    };
    let detail = if token.state != TokenState::Valid {
        html!(
            r#"<p id="reason">Reason: {reason}</p><p id="action">What to do: {action}</p>"#;
            reason = token.reason,
            action = advice::for_status(&ctx.config, token).unwrap_or_default(),
        )
    } else if let Some(expires) = token.expires_at {
        html!(
            "<p>Token valid until {expires}.</p>";
            expires = humantime::format_rfc3339_seconds(expires).to_string(),
        )
    } else {
        Markup::default()
    };
    html!(
        r#"<p id="state" class="{class}" data-state="{state}"><strong>{headline}</strong></p>"#,
        r#"{detail}<form method="post" action="/reauthorize">"#,
        r#"<button id="reauthorize" type="submit">Re-authorize</button></form>"#;
        class = class,
        state = token.state.as_str(),
        headline = headline,
        detail = detail,
    )
}

/// The `last_error` codes of an attempt that did not reach Microsoft or could not read its
/// answer (`deliver::graph`): nothing the token state shows, since it is not a sign-in matter.
const UNREACHED: [&str; 2] = ["NetworkError", "TokenEndpointUnavailable"];

/// Why the latest failed attempt of pending mail did not reach Microsoft, and what to do: a
/// proxy or TLS-inspecting firewall breaks delivery while the sign-in still looks fine.
fn reach_section(ctx: &StatusContext, records: &[Record]) -> Markup {
    let latest = records
        .iter()
        .filter(|r| r.state == MailState::Pending)
        .filter_map(|r| Some((r.next_attempt, r.last_error.as_ref()?)))
        .filter(|(_, error)| UNREACHED.contains(&error.code.as_str()))
        .max_by_key(|(retry_at, _)| *retry_at);
    let Some((_, error)) = latest else {
        return Markup::default();
    };
    html!(
        r#"<div id="unreachable"><p class="bad">Microsoft could not be reached at the last "#,
        r#"attempt: {reason}. Mail is kept and retried.</p>"#,
        r#"<p id="reach-action">What to do: {action}</p></div>"#;
        reason = error.message,
        action = advice::for_unreachable(&ctx.config, &error.message),
    )
}

/// The Re-authorize button's progress: the code and link while one is out, then the outcome.
fn login_section(login: &LoginView) -> Markup {
    match login {
        LoginView::Idle => Markup::default(),
        LoginView::Waiting(code, _) => {
            let uri = &code.verification_uri;
            // Only an https link is made clickable; anything else is shown as text.
            let link = if uri.starts_with("https://") {
                html!(
                    r#"<a id="verification-uri" href="{uri}" target="_blank" rel="noopener">{uri}</a>"#;
                    uri = uri,
                )
            } else {
                html!(r#"<code id="verification-uri">{uri}</code>"#; uri = uri)
            };
            html!(
                r#"<div id="login" role="status"><p>Open {link} and enter the code "#,
                r#"<strong id="user-code">{code}</strong>. "#,
                "This page refreshes itself until you have signed in.</p></div>";
                link = link,
                code = code.user_code,
            )
        }
        LoginView::Failed(why) => html!(
            r#"<div id="login" role="alert"><p class="bad">Sign-in failed: {why}</p></div>"#;
            why = why,
        ),
        LoginView::Done => Markup::literal(
            r#"<div id="login" role="status"><p class="ok">Signed in. Held mail is being delivered.</p></div>"#,
        ),
    }
}

/// The counts, and a table of the first `ROWS` messages with their retry and delete buttons.
fn queue_section(counts: &QueueCounts, records: &[Record]) -> Markup {
    let table = if records.is_empty() {
        Markup::default()
    } else {
        let more = if records.len() > ROWS {
            html!(
                "<p>… and {more} more (see <code>graph-relay queue list</code>).</p>";
                more = records.len() - ROWS,
            )
        } else {
            Markup::default()
        };
        html!(
            "<table><caption>Messages in the spool</caption><thead><tr>",
            "<th>id</th><th>state</th><th>attempts</th><th>from</th><th>to</th>",
            "<th>last error</th><th>actions</th></tr></thead><tbody>{rows}</tbody></table>{more}";
            rows = records.iter().take(ROWS).map(queue_row).collect::<Markup>(),
            more = more,
        )
    };
    html!(
        "<h2>Queue</h2><p id=\"counts\">",
        "{pending} pending ({held} held for re-authorization), {failed} failed</p>{table}";
        pending = counts.pending,
        held = counts.held,
        failed = counts.failed,
        table = table,
    )
}

fn queue_row(record: &Record) -> Markup {
    let last_error = record.last_error.as_ref().map(ToString::to_string);
    html!(
        "<tr><td><code>{id}</code></td><td>{state}</td><td>{attempts}</td>",
        "<td>{from}</td><td>{to}</td><td>{error}</td><td>",
        r#"<form method="post" action="/queue/{id}/retry" style="display:inline">"#,
        r#"<button aria-label="retry message {id}">retry</button></form> "#,
        r#"<form method="post" action="/queue/{id}/delete" style="display:inline" "#,
        r#"onsubmit="return confirm('Delete message {id} for good?')">"#,
        r#"<button aria-label="delete message {id}">delete</button></form></td></tr>"#;
        id = record.id.to_string(),
        state = record.state.as_str(),
        attempts = record.attempts,
        from = record.envelope.mail_from,
        to = record.envelope.rcpt_to.join(", "),
        error = last_error.unwrap_or_default(),
    )
}

/// HTML-escapes text from mail and from error messages.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
