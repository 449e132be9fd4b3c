//! The fake Graph mail endpoints: sendMail (JSON and MIME), draft creation, attachments, upload
//! sessions and their pre-authenticated PUT URLs, and draft send. Bearer tokens are checked
//! against what the fake identity platform issued; every accepted send is recorded.

use super::validate::{self, get_ci};
use super::*;

const JSON_UNREADABLE: &str = "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.";
const ITEM_NOT_FOUND: &str = "The specified object was not found in the store.";
const ACCESS_DENIED: &str = "Access is denied. Check credentials and try again.";

/// Decrements the mailbox's in-flight count when the request is answered.
struct InFlight {
    shared: Arc<Shared>,
    mailbox: String,
}

impl InFlight {
    /// Counts the request; `Err` when the mailbox already has the maximum in flight.
    fn enter(shared: &Arc<Shared>, mailbox: &str) -> (InFlight, bool) {
        let key = mailbox.to_lowercase();
        let mut st = shared.lock();
        let n = {
            let c = st.in_flight.entry(key.clone()).or_insert(0);
            *c += 1;
            *c
        };
        let max = st.max_in_flight.entry(key.clone()).or_insert(0);
        *max = (*max).max(n);
        let over = st.cfg.enforce_mailbox_concurrency && n > MAILBOX_CONCURRENCY;
        (
            InFlight {
                shared: shared.clone(),
                mailbox: key,
            },
            over,
        )
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(c) = st.in_flight.get_mut(&self.mailbox) {
            *c = c.saturating_sub(1);
        }
    }
}

/// Answers a request to `mailbox` as Graph paces them: throttled past the mailbox's concurrency,
/// after the configured delay, a reply scripted for `route` if one is queued, else `answer`. The
/// request counts as in flight until the reply is made.
async fn paced(
    shared: &Arc<Shared>,
    mailbox: &str,
    route: Route,
    delay: Duration,
    answer: impl FnOnce(&mut St) -> Reply,
) -> Reply {
    let (_in_flight, over) = InFlight::enter(shared, mailbox);
    if over {
        return throttled();
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut st = shared.lock();
    take_scripted(&mut st, route, mailbox).unwrap_or_else(|| answer(&mut st))
}

/// Graph's answer to a 5th concurrent request to one mailbox.
fn throttled() -> Reply {
    GraphError::new(
        429,
        "ApplicationThrottled",
        "Application is over its MailboxConcurrency limit.",
    )
    .reply()
    .header("retry-after", "1")
}

fn unauthorized(message: &str) -> Reply {
    GraphError::new(401, "InvalidAuthenticationToken", message)
        .reply()
        .header("www-authenticate", WWW_AUTHENTICATE)
}

fn take_scripted(st: &mut St, route: Route, mailbox: &str) -> Option<Reply> {
    let i = st
        .scripted
        .iter()
        .position(|(m, _)| m.matches(route, Some(mailbox)))?;
    let (_, resp) = st.scripted.remove(i);
    Some(Reply::scripted(&resp))
}

/// The bearer token's facts, or the 401 Graph gives.
fn authenticate(st: &St, req: &Req) -> Result<AccessToken, Reply> {
    let Some(h) = req.header("authorization") else {
        return Err(unauthorized("Access token is empty."));
    };
    let token = match h.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => return Err(unauthorized("Access token is empty.")),
    };
    if token.is_empty() {
        return Err(unauthorized("Access token is empty."));
    }
    let Some(info) = st.access_tokens.get(token) else {
        return Err(unauthorized(
            "CompactToken parsing failed with error code: 80049217",
        ));
    };
    if info.revoked || Instant::now() >= info.expires_at {
        return Err(unauthorized(TOKEN_EXPIRED_MESSAGE));
    }
    Ok(info.clone())
}

/// Resolves the mailbox of `/users/{upn}` or `/me` for this token.
fn resolve_mailbox(
    st: &St,
    token: &AccessToken,
    url_mailbox: Option<&str>,
) -> Result<String, GraphError> {
    match url_mailbox {
        None if !token.delegated => Err(GraphError::new(
            404,
            "ResourceNotFound",
            "Resource could not be discovered.",
        )),
        None => Ok(st.cfg.delegated_user.clone()),
        Some(upn) => {
            if token.delegated {
                if upn.eq_ignore_ascii_case(&st.cfg.delegated_user) {
                    return Ok(upn.to_string());
                }
                return Err(GraphError::new(403, "ErrorAccessDenied", ACCESS_DENIED));
            }
            let exists = match &st.cfg.mailboxes {
                Some(list) => list.iter().any(|m| m.eq_ignore_ascii_case(upn)),
                None => validate::plausible_address(upn),
            };
            if exists {
                Ok(upn.to_string())
            } else {
                Err(GraphError::new(
                    404,
                    "ErrorInvalidUser",
                    format!("The requested user '{upn}' is invalid."),
                ))
            }
        }
    }
}

fn needed_permission(route: Route) -> &'static str {
    match route {
        Route::SendMail | Route::SendDraft => "Mail.Send",
        _ => "Mail.ReadWrite",
    }
}

/// `from`/`sender` must be the mailbox, or one it may send as.
fn check_send_as(st: &St, mailbox: &str, msg: &Value) -> Result<(), GraphError> {
    if !st.cfg.check_send_as {
        return Ok(());
    }
    for prop in ["from", "sender"] {
        let Some(addr) = get_ci(msg, prop)
            .and_then(|f| get_ci(f, "emailAddress"))
            .and_then(|e| get_ci(e, "address"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let ok = addr.eq_ignore_ascii_case(mailbox)
            || st
                .send_as
                .iter()
                .any(|(m, a)| m.eq_ignore_ascii_case(mailbox) && a.eq_ignore_ascii_case(addr));
        if !ok {
            return Err(GraphError::new(
                403,
                "ErrorSendAsDenied",
                SEND_AS_DENIED_MESSAGE,
            ));
        }
    }
    Ok(())
}

/// Decodes a base64 MIME body (line breaks allowed) and parses it.
fn decode_mime(body: &[u8]) -> Result<Vec<u8>, GraphError> {
    let invalid = || {
        GraphError::new(
            400,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        )
    };
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .collect();
    if text.is_empty() {
        return Err(invalid());
    }
    let mime = STANDARD.decode(&text).map_err(|_| invalid())?;
    let parsed = mail_parser::MessageParser::default()
        .parse(&mime)
        .ok_or_else(invalid)?;
    if parsed.headers().is_empty() {
        return Err(invalid());
    }
    Ok(mime)
}

fn mime_recipient_count(mime: &[u8]) -> usize {
    let Some(m) = mail_parser::MessageParser::default().parse(mime) else {
        return 0;
    };
    [m.to(), m.cc(), m.bcc()]
        .into_iter()
        .flatten()
        .map(|a| a.iter().filter(|x| x.address().is_some()).count())
        .sum()
}

fn no_recipients() -> GraphError {
    GraphError::new(
        400,
        "ErrorInvalidRecipients",
        "At least one recipient is not valid., A message can't be sent because it contains no recipients.",
    )
}

fn parse_json(req: &Req) -> Result<Value, GraphError> {
    match req.media_type().as_deref() {
        Some("application/json") => serde_json::from_slice(&req.body)
            .map_err(|_| GraphError::new(400, "BadRequest", JSON_UNREADABLE)),
        Some(other) => Err(GraphError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "(fake Graph) Content-Type '{other}' is not supported here; use application/json."
            ),
        )),
        None => Err(GraphError::new(400, "BadRequest", JSON_UNREADABLE)),
    }
}

fn message_id(req: &Req) -> String {
    // /v1.0/users/{upn}/messages/{id}/... or /v1.0/me/messages/{id}/...
    let idx = req
        .segments
        .iter()
        .position(|s| s.eq_ignore_ascii_case("messages"))
        .expect("route has messages");
    req.segments.get(idx + 1).cloned().unwrap_or_default()
}

/// Graph routes (bearer-authenticated) and upload URLs.
pub(super) async fn handle(
    shared: &Arc<Shared>,
    req: &Req,
    route: Route,
    url_mailbox: Option<&str>,
) -> Reply {
    if matches!(route, Route::UploadChunk | Route::CancelUpload) {
        return upload(shared, req, route).await;
    }
    let rid = util::guid();
    let (token, mailbox, delay) = {
        let st = shared.lock();
        let allowed = match route {
            Route::DeleteMessage => Method::DELETE,
            Route::GetMessage => Method::GET,
            _ => Method::POST,
        };
        if req.method != allowed {
            return GraphError::new(
                405,
                "BadRequest",
                format!(
                    "(fake Graph) {} is not supported on {}.",
                    req.method, req.path
                ),
            )
            .reply();
        }
        let token = match authenticate(&st, req) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let mailbox = match resolve_mailbox(&st, &token, url_mailbox) {
            Ok(m) => m,
            Err(e) => return e.reply(),
        };
        let perm = needed_permission(route);
        if !token.permissions.iter().any(|p| p == perm) {
            let mut r = GraphError::new(403, "ErrorAccessDenied", ACCESS_DENIED).reply();
            r.mailbox = Some(mailbox);
            return r;
        }
        (token, mailbox, st.delay)
    };
    let mut reply = paced(shared, &mailbox, route, delay, |st| {
        if req.body.len() > MAX_REQUEST_BYTES {
            return GraphError::new(
                413,
                "RequestEntityTooLarge",
                "The maximum request length supported is 4MB.",
            )
            .reply();
        }
        let result = match route {
            Route::SendMail => send_mail(st, req, &mailbox, token.delegated),
            Route::CreateMessage => {
                create_message(st, &shared.base_url, req, &mailbox, token.delegated)
            }
            Route::AddAttachment => add_attachment(st, req, &mailbox),
            Route::CreateUploadSession => {
                create_upload_session(st, &shared.base_url, req, &mailbox)
            }
            Route::SendDraft => send_draft(st, req, &mailbox),
            Route::DeleteMessage => delete_message(st, req, &mailbox),
            Route::GetMessage => get_message(st, req, &mailbox),
            _ => Err(GraphError::new(
                404,
                "BadRequest",
                "(fake Graph) no such endpoint",
            )),
        };
        let reply = result.unwrap_or_else(|e| e.reply());
        match st.lost_replies.iter().position(|r| *r == route) {
            Some(i) if reply.status < 300 => {
                st.lost_replies.remove(i);
                GraphError::new(504, "GatewayTimeout", "(fake Graph) the answer was lost").reply()
            }
            _ => reply,
        }
    })
    .await;
    reply.headers.push(("request-id".into(), rid.clone()));
    reply.headers.push((
        "client-request-id".into(),
        req.header("client-request-id").unwrap_or(&rid).to_string(),
    ));
    reply.mailbox = Some(mailbox);
    reply
}

fn send_mail(st: &mut St, req: &Req, mailbox: &str, delegated: bool) -> Result<Reply, GraphError> {
    let sent = match req.media_type().as_deref() {
        Some("text/plain") => {
            let mime = decode_mime(&req.body)?;
            if mime_recipient_count(&mime) == 0 {
                return Err(no_recipients());
            }
            SentMessage {
                mailbox: mailbox.to_string(),
                path: SendPath::SendMailMime,
                json: None,
                mime: Some(mime),
                draft_id: None,
                delegated,
                at: SystemTime::now(),
            }
        }
        _ => {
            let body = parse_json(req)?;
            let msg = validate::sendmail_params(&body)?;
            check_send_as(st, mailbox, msg)?;
            validate::sendable_recipients(msg)?;
            SentMessage {
                mailbox: mailbox.to_string(),
                path: SendPath::SendMailJson,
                json: Some(body.clone()),
                mime: None,
                draft_id: None,
                delegated,
                at: SystemTime::now(),
            }
        }
    };
    st.sent.push(sent);
    Ok(Reply::empty(202))
}

/// Splits `attachments` off a message; returns the message without them, and them decoded.
fn split_attachments(msg: &Value) -> Result<(Value, Vec<StoredAttachment>), GraphError> {
    let mut msg = msg.clone();
    let mut out = Vec::new();
    if let Some(obj) = msg.as_object_mut() {
        let key = obj
            .keys()
            .find(|k| k.eq_ignore_ascii_case("attachments"))
            .cloned();
        if let Some(Value::Array(atts)) = key.and_then(|k| obj.remove(&k)) {
            for a in atts {
                let bytes = validate::file_attachment(&a)?;
                out.push(stored_attachment(a, bytes));
            }
        }
    }
    Ok((msg, out))
}

fn stored_attachment(mut meta: Value, bytes: Vec<u8>) -> StoredAttachment {
    if let Some(obj) = meta.as_object_mut() {
        obj.retain(|k, _| !k.eq_ignore_ascii_case("contentBytes"));
        obj.entry("id").or_insert_with(|| json!(util::item_id()));
        obj.insert("size".into(), json!(bytes.len()));
    }
    StoredAttachment { meta, bytes }
}

fn create_message(
    st: &mut St,
    base: &str,
    req: &Req,
    mailbox: &str,
    delegated: bool,
) -> Result<Reply, GraphError> {
    let id = util::item_id();
    let now = util::rfc3339(SystemTime::now());
    let (message, mime, attachments) = match req.media_type().as_deref() {
        Some("text/plain") => (json!({}), Some(decode_mime(&req.body)?), Vec::new()),
        _ => {
            let body = parse_json(req)?;
            validate::message_resource(&body)?;
            check_send_as(st, mailbox, &body)?;
            let (m, a) = split_attachments(&body)?;
            (m, None, a)
        }
    };
    let mut resp = message.clone();
    if let Some(obj) = resp.as_object_mut() {
        obj.insert(
            "@odata.context".into(),
            json!(format!(
                "{base}/v1.0/$metadata#users('{mailbox}')/messages/$entity"
            )),
        );
        obj.insert(
            "@odata.etag".into(),
            json!(format!("W/\"{}\"", util::random_b64url(12))),
        );
        obj.insert("id".into(), json!(id));
        obj.insert("createdDateTime".into(), json!(now));
        obj.insert("lastModifiedDateTime".into(), json!(now));
        obj.insert("changeKey".into(), json!(util::random_b64url(12)));
        obj.insert("isDraft".into(), json!(true));
        obj.insert("hasAttachments".into(), json!(!attachments.is_empty()));
        obj.insert(
            "internetMessageId".into(),
            json!(format!("<{}@contoso.test>", util::random_b64url(12))),
        );
        obj.insert("parentFolderId".into(), json!(util::item_id()));
        obj.insert("conversationId".into(), json!(util::item_id()));
    }
    let immutable_id = req
        .header("prefer")
        .is_some_and(|p| p.replace(' ', "").contains("IdType=\"ImmutableId\""));
    st.drafts.insert(
        id.clone(),
        Draft {
            mailbox: mailbox.to_string(),
            delegated,
            message,
            mime,
            attachments,
            immutable_id,
        },
    );
    Ok(Reply::json(201, &resp).header(
        "location",
        &format!("{base}/v1.0/users('{mailbox}')/messages('{id}')"),
    ))
}

fn find_draft<'a>(st: &'a mut St, id: &str, mailbox: &str) -> Result<&'a mut Draft, GraphError> {
    match st.drafts.get_mut(id) {
        Some(d) if d.mailbox.eq_ignore_ascii_case(mailbox) => Ok(d),
        _ => Err(GraphError::new(404, "ErrorItemNotFound", ITEM_NOT_FOUND)),
    }
}

fn add_attachment(st: &mut St, req: &Req, mailbox: &str) -> Result<Reply, GraphError> {
    let id = message_id(req);
    find_draft(st, &id, mailbox)?;
    let body = parse_json(req)?;
    let bytes = validate::file_attachment(&body)?;
    if bytes.len() as u64 >= st.cfg.upload_session_min_bytes {
        return Err(GraphError::new(
            413,
            "RequestEntityTooLarge",
            "(fake Graph) Attachments of 3 MB or more must be added through an upload session.",
        ));
    }
    let att = stored_attachment(body, bytes);
    let mut resp = att.meta.clone();
    resp["contentBytes"] = json!(STANDARD.encode(&att.bytes));
    find_draft(st, &id, mailbox)?.attachments.push(att);
    Ok(Reply::json(201, &resp))
}

fn create_upload_session(
    st: &mut St,
    base: &str,
    req: &Req,
    mailbox: &str,
) -> Result<Reply, GraphError> {
    let id = message_id(req);
    find_draft(st, &id, mailbox)?;
    let body = parse_json(req)?;
    let item = validate::create_upload_session(&body)?;
    if item.size < st.cfg.upload_session_min_bytes {
        return Err(GraphError::new(
            400,
            "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
            "Attachment size must be greater than the minimum size.",
        ));
    }
    if item.size > UPLOAD_SESSION_MAX_BYTES {
        return Err(GraphError::new(
            400,
            "ErrorAttachmentSizeShouldNotBeGreaterThanMaximumSize",
            "Attachment size must be less than the maximum size.",
        ));
    }
    let sid = util::item_id();
    let authtoken = util::random_b64url(48);
    let expires_at = SystemTime::now() + st.cfg.upload_session_lifetime;
    let expires_after_chunks = st.expiring_sessions.pop_front();
    let url = format!(
        "{base}/upload/api/v2.0/Users('{}@{}')/Messages('{id}')/AttachmentSessions('{sid}')?authtoken={authtoken}",
        util::guid(),
        st.cfg.tenant
    );
    st.sessions.insert(
        sid,
        UploadSession {
            mailbox: mailbox.to_string(),
            message_id: id,
            authtoken,
            name: item.name,
            size: item.size,
            content_type: item.content_type,
            is_inline: item.is_inline,
            content_id: item.content_id,
            received: Vec::new(),
            expires_at,
            expires_after_chunks,
            chunks_received: 0,
        },
    );
    Ok(Reply::json(
        201,
        &json!({
            "@odata.context": format!("{base}/v1.0/$metadata#microsoft.graph.uploadSession"),
            "uploadUrl": url,
            "expirationDateTime": util::rfc3339(expires_at),
            "nextExpectedRanges": ["0-"],
        }),
    ))
}

/// `GET .../messages/{id}`: a draft, or a sent draft created with an immutable id (any other
/// sent draft moved to Sent Items under a new id: 404, as in Graph).
fn get_message(st: &St, req: &Req, mailbox: &str) -> Result<Reply, GraphError> {
    let id = message_id(req);
    let is_draft = match st.drafts.get(&id) {
        Some(d) if d.mailbox.eq_ignore_ascii_case(mailbox) => true,
        _ => match st.sent_drafts.get(&id) {
            Some(m) if m.eq_ignore_ascii_case(mailbox) => false,
            _ => return Err(GraphError::new(404, "ErrorItemNotFound", ITEM_NOT_FOUND)),
        },
    };
    Ok(Reply::json(200, &json!({ "id": id, "isDraft": is_draft })))
}

/// `DELETE .../messages/{id}`: 204, or 404 `ErrorItemNotFound`.
fn delete_message(st: &mut St, req: &Req, mailbox: &str) -> Result<Reply, GraphError> {
    let id = message_id(req);
    find_draft(st, &id, mailbox)?;
    st.drafts.remove(&id);
    Ok(Reply::empty(204))
}

fn send_draft(st: &mut St, req: &Req, mailbox: &str) -> Result<Reply, GraphError> {
    let id = message_id(req);
    let max = st.cfg.max_message_bytes;
    let draft = find_draft(st, &id, mailbox)?.clone();
    let size: usize = draft
        .attachments
        .iter()
        .map(|a| a.bytes.len())
        .sum::<usize>()
        + draft.mime.as_ref().map_or(0, Vec::len)
        + draft.message.to_string().len();
    if size > max {
        return Err(GraphError::new(
            400,
            "ErrorMessageSizeExceeded",
            "The message exceeds the maximum supported size.",
        ));
    }
    let sent = if let Some(mime) = &draft.mime {
        if mime_recipient_count(mime) == 0 {
            return Err(no_recipients());
        }
        SentMessage {
            mailbox: draft.mailbox.clone(),
            path: SendPath::Draft,
            json: None,
            mime: Some(mime.clone()),
            draft_id: Some(id.clone()),
            delegated: draft.delegated,
            at: SystemTime::now(),
        }
    } else {
        validate::sendable_recipients(&draft.message)?;
        let mut message = draft.message.clone();
        let atts: Vec<Value> = draft
            .attachments
            .iter()
            .map(|a| {
                let mut m = a.meta.clone();
                m["contentBytes"] = json!(STANDARD.encode(&a.bytes));
                m
            })
            .collect();
        if !atts.is_empty() {
            message["attachments"] = Value::Array(atts);
        }
        SentMessage {
            mailbox: draft.mailbox.clone(),
            path: SendPath::Draft,
            json: Some(json!({ "message": message })),
            mime: None,
            draft_id: Some(id.clone()),
            delegated: draft.delegated,
            at: SystemTime::now(),
        }
    };
    st.drafts.remove(&id);
    if draft.immutable_id {
        st.sent_drafts.insert(id.clone(), draft.mailbox.clone());
    }
    st.sessions.retain(|_, s| s.message_id != id);
    st.sent.push(sent);
    Ok(Reply::empty(202))
}

/// `PUT`/`DELETE` on an upload URL (pre-authenticated: no bearer token allowed).
async fn upload(shared: &Arc<Shared>, req: &Req, route: Route) -> Reply {
    let sid = req
        .path
        .split("AttachmentSessions('")
        .nth(1)
        .and_then(|s| s.split("')").next())
        .unwrap_or("")
        .to_string();
    let authtoken = req
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("authtoken="))
        .map(|t| util::percent_decode(t, false));
    let (mailbox, delay) = {
        let st = shared.lock();
        let Some(sess) = st.sessions.get(&sid) else {
            return GraphError::new(404, "ErrorItemNotFound", ITEM_NOT_FOUND).reply();
        };
        if authtoken.as_deref() != Some(sess.authtoken.as_str()) {
            return GraphError::new(
                401,
                "InvalidAuthenticationToken",
                "(fake Graph) The upload URL's authtoken is missing or wrong: PUT to uploadUrl exactly as returned.",
            )
            .reply();
        }
        if req.header("authorization").is_some() {
            let mut r = GraphError::new(
                400,
                "InvalidRequest",
                "(fake Graph) An Authorization header must not be sent to a pre-authenticated upload URL.",
            )
            .reply();
            r.mailbox = Some(sess.mailbox.clone());
            return r;
        }
        let used_up = sess
            .expires_after_chunks
            .is_some_and(|n| sess.chunks_received >= n);
        if used_up || SystemTime::now() > sess.expires_at {
            return GraphError::new(
                404,
                "ErrorItemNotFound",
                "(fake Graph) The upload session has expired.",
            )
            .reply();
        }
        (sess.mailbox.clone(), st.delay)
    };
    if route == Route::CancelUpload {
        shared.lock().sessions.remove(&sid);
        let mut r = Reply::empty(204);
        r.mailbox = Some(mailbox);
        return r;
    }
    let mut reply = paced(shared, &mailbox, Route::UploadChunk, delay, |st| {
        put_chunk(st, &shared.base_url, req, &sid).unwrap_or_else(|e| e.reply())
    })
    .await;
    reply.mailbox = Some(mailbox);
    reply
}

fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

fn put_chunk(st: &mut St, base: &str, req: &Req, sid: &str) -> Result<Reply, GraphError> {
    if req.method != Method::PUT {
        return Err(GraphError::new(
            405,
            "BadRequest",
            format!(
                "(fake Graph) {} is not supported on an upload URL.",
                req.method
            ),
        ));
    }
    if req.media_type().as_deref() != Some("application/octet-stream") {
        return Err(GraphError::new(
            415,
            "UnsupportedMediaType",
            "(fake Graph) Upload chunks must be sent with Content-Type: application/octet-stream.",
        ));
    }
    let Some((start, end, total)) = req.header("content-range").and_then(parse_content_range)
    else {
        return Err(GraphError::new(
            400,
            "InvalidContentRange",
            "(fake Graph) Content-Range must be 'bytes {start}-{end}/{total}'.",
        ));
    };
    let sess = st.sessions.get_mut(sid).expect("checked by caller");
    if total != sess.size {
        return Err(GraphError::new(
            400,
            "InvalidContentRange",
            format!(
                "(fake Graph) Content-Range total {total} differs from the session size {}.",
                sess.size
            ),
        ));
    }
    let next = sess.received.len() as u64;
    if start != next {
        return Err(GraphError::new(
            416,
            "InvalidContentRange",
            format!(
                "(fake Graph) Bytes must be uploaded in order: expected a range starting at {next}, got {start}."
            ),
        ));
    }
    if end < start || end >= total {
        return Err(GraphError::new(
            400,
            "InvalidContentRange",
            format!("(fake Graph) Invalid range {start}-{end}/{total}."),
        ));
    }
    let len = (end - start + 1) as usize;
    if req.body.len() != len {
        return Err(GraphError::new(
            400,
            "InvalidContentRange",
            format!(
                "(fake Graph) The body has {} bytes but Content-Range names {len}.",
                req.body.len()
            ),
        ));
    }
    if len > MAX_UPLOAD_CHUNK_BYTES {
        return Err(GraphError::new(
            413,
            "RequestEntityTooLarge",
            "(fake Graph) An upload chunk may be at most 4 MiB.",
        ));
    }
    let keep = if st.partial_chunks > 0 {
        st.partial_chunks -= 1;
        len / 2
    } else {
        len
    };
    let sess = st.sessions.get_mut(sid).expect("checked by caller");
    sess.received.extend_from_slice(&req.body[..keep]);
    sess.chunks_received += 1;
    // Graph: "each fragment uploaded during the session extends the expiration time".
    sess.expires_at = SystemTime::now() + st.cfg.upload_session_lifetime;
    // What the session took, which is what the client must go on from.
    let chunk = UploadChunk {
        session: sid.to_string(),
        start,
        end: start + keep as u64 - 1,
        total,
        len: keep,
    };
    let done = sess.received.len() as u64 == sess.size;
    let context = format!(
        "{base}/api/v2.0/$metadata#Users('{}')/Messages('{}')/AttachmentSessions/$entity",
        sess.mailbox, sess.message_id
    );
    let expires = util::rfc3339(sess.expires_at);
    let received = sess.received.len();
    st.chunks.push(chunk);
    if !done {
        return Ok(Reply::json(
            200,
            &json!({
                "@odata.context": context,
                "ExpirationDateTime": expires,
                "nextExpectedRanges": [received.to_string()],
            }),
        ));
    }
    let sess = st.sessions.remove(sid).expect("present");
    let Some(draft) = st.drafts.get_mut(&sess.message_id) else {
        return Err(GraphError::new(404, "ErrorItemNotFound", ITEM_NOT_FOUND));
    };
    let att_id = util::item_id();
    let mut meta = json!({
        "@odata.type": "#microsoft.graph.fileAttachment",
        "id": att_id,
        "name": sess.name,
        "isInline": sess.is_inline,
    });
    if let Some(ct) = &sess.content_type {
        meta["contentType"] = json!(ct);
    }
    if let Some(cid) = &sess.content_id {
        meta["contentId"] = json!(cid);
    }
    draft
        .attachments
        .push(stored_attachment(meta, sess.received));
    let location = format!(
        "{base}/api/v2.0/Users('{}')/Messages('{}')/Attachments('{att_id}')",
        sess.mailbox, sess.message_id
    );
    Ok(Reply::empty(201).header("location", &location))
}
