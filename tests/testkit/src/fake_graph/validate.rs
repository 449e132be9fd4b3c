//! Strict validation of Graph mail JSON (sendMail parameters, the message resource, recipients,
//! itemBody, internetMessageHeaders, fileAttachment, attachmentItem) with Graph's error codes.
//! It must reject what Graph rejects; where Graph's behaviour is unknown it errs on strictness and
//! says "(fake Graph)" in the message.

use super::{GraphError, MAX_RECIPIENTS};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

/// Case-insensitive property lookup (Graph property names are case-insensitive on input).
pub fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Addresses of a recipient collection property of a message.
pub fn recipient_addresses(msg: &Value, name: &str) -> Vec<String> {
    get_ci(msg, name)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    get_ci(r, "emailAddress")
                        .and_then(|e| get_ci(e, "address"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn read_err(message: impl Into<String>) -> GraphError {
    GraphError::new(400, "RequestBodyRead", message)
}

fn no_property(name: &str, ty: &str) -> GraphError {
    read_err(format!(
        "The property '{name}' does not exist on type '{ty}'. Make sure to only use property names that are defined by the type or mark the type as open type."
    ))
}

fn node(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "StartObject",
        Value::Array(_) => "StartArray",
        _ => "PrimitiveValue",
    }
}

fn unexpected_node(prop: &str, v: &Value, expected: &str) -> GraphError {
    read_err(format!(
        "An unexpected '{}' node was found for property named '{prop}' when reading from the JSON reader. A '{expected}' node was expected.",
        node(v)
    ))
}

fn expect_string(prop: &str, v: &Value) -> Result<(), GraphError> {
    match v {
        Value::String(_) | Value::Null => Ok(()),
        Value::Object(_) | Value::Array(_) => Err(unexpected_node(prop, v, "PrimitiveValue")),
        _ => Err(read_err(
            "Cannot convert a primitive value to the expected type 'Edm.String'. See the inner exception for more details.",
        )),
    }
}

fn expect_bool(prop: &str, v: &Value) -> Result<(), GraphError> {
    match v {
        Value::Bool(_) | Value::Null => Ok(()),
        Value::Object(_) | Value::Array(_) => Err(unexpected_node(prop, v, "PrimitiveValue")),
        _ => Err(read_err(
            "Cannot convert a primitive value to the expected type 'Edm.Boolean'. See the inner exception for more details.",
        )),
    }
}

fn expect_enum(prop: &str, v: &Value, ty: &str, allowed: &[&str]) -> Result<(), GraphError> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) if allowed.iter().any(|a| a.eq_ignore_ascii_case(s)) => Ok(()),
        Value::String(s) => Err(read_err(format!(
            "Cannot convert the literal '{s}' to the expected type '{ty}'."
        ))),
        _ => Err(unexpected_node(prop, v, "PrimitiveValue")),
    }
}

fn expect_object<'a>(
    prop: &str,
    v: &'a Value,
) -> Result<Option<&'a Map<String, Value>>, GraphError> {
    match v {
        Value::Null => Ok(None),
        Value::Object(o) => Ok(Some(o)),
        _ => Err(unexpected_node(prop, v, "StartObject")),
    }
}

fn expect_array<'a>(prop: &str, v: &'a Value) -> Result<Option<&'a Vec<Value>>, GraphError> {
    match v {
        Value::Null => Ok(None),
        Value::Array(a) => Ok(Some(a)),
        _ => Err(unexpected_node(prop, v, "StartArray")),
    }
}

fn is_annotation(k: &str) -> bool {
    k.starts_with('@') || k.contains("@odata.")
}

/// Checks `@odata.type` if present.
fn check_odata_type(obj: &Map<String, Value>, expected: &str) -> Result<(), GraphError> {
    if let Some(t) = obj.get("@odata.type") {
        let t = t.as_str().unwrap_or("");
        if !t.trim_start_matches('#').eq_ignore_ascii_case(expected) {
            return Err(read_err(format!(
                "A type named '{t}' could not be resolved by the model. When a model is available, each type name must resolve to a valid type; expected '{expected}'."
            )));
        }
    }
    Ok(())
}

/// The `sendMail` action body: `message` (required) and `saveToSentItems` (Boolean) only.
pub fn sendmail_params(body: &Value) -> Result<&Value, GraphError> {
    let Some(obj) = body.as_object() else {
        return Err(read_err(
            "An unexpected 'StartArray' node was found when reading from the JSON reader. A 'StartObject' node was expected.",
        ));
    };
    let mut message = None;
    for (k, v) in obj {
        match k.to_ascii_lowercase().as_str() {
            "message" => message = Some(v),
            "savetosentitems" => expect_bool(k, v)?,
            _ if is_annotation(k) => {}
            _ => {
                return Err(read_err(format!(
                    "The parameter '{k}' in the request payload is not a valid parameter for the operation 'sendMail'."
                )));
            }
        }
    }
    match message {
        Some(m @ Value::Object(_)) => {
            message_resource(m)?;
            Ok(m)
        }
        Some(Value::Null) | None => Err(GraphError::new(
            400,
            "ErrorInvalidParameter",
            "The value of the parameter 'Message' is empty.",
        )),
        Some(other) => Err(unexpected_node("message", other, "StartObject")),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Body,
    Recipients,
    Recipient,
    Importance,
    Inference,
    Headers,
    Attachments,
    Strings,
    ExtProps,
    AnyObject,
    AnyArray,
}

/// The properties of `microsoft.graph.message` (v1.0), with their kinds.
const MESSAGE_PROPS: &[(&str, Kind)] = &[
    ("bccRecipients", Kind::Recipients),
    ("body", Kind::Body),
    ("bodyPreview", Kind::Str),
    ("categories", Kind::Strings),
    ("ccRecipients", Kind::Recipients),
    ("changeKey", Kind::Str),
    ("conversationId", Kind::Str),
    ("conversationIndex", Kind::Str),
    ("createdDateTime", Kind::Str),
    ("flag", Kind::AnyObject),
    ("from", Kind::Recipient),
    ("hasAttachments", Kind::Bool),
    ("id", Kind::Str),
    ("importance", Kind::Importance),
    ("inferenceClassification", Kind::Inference),
    ("internetMessageHeaders", Kind::Headers),
    ("internetMessageId", Kind::Str),
    ("isDeliveryReceiptRequested", Kind::Bool),
    ("isDraft", Kind::Bool),
    ("isRead", Kind::Bool),
    ("isReadReceiptRequested", Kind::Bool),
    ("lastModifiedDateTime", Kind::Str),
    ("parentFolderId", Kind::Str),
    ("receivedDateTime", Kind::Str),
    ("replyTo", Kind::Recipients),
    ("sender", Kind::Recipient),
    ("sentDateTime", Kind::Str),
    ("subject", Kind::Str),
    ("toRecipients", Kind::Recipients),
    ("uniqueBody", Kind::Body),
    ("webLink", Kind::Str),
    ("attachments", Kind::Attachments),
    ("extensions", Kind::AnyArray),
    ("multiValueExtendedProperties", Kind::AnyArray),
    ("singleValueExtendedProperties", Kind::ExtProps),
];

/// Exchange's subject limit, in characters.
pub const MAX_SUBJECT_CHARS: usize = 255;
/// Exchange refuses a message whose header section is larger (`552 5.3.4`).
pub const MAX_HEADER_SECTION_BYTES: usize = 256 * 1024;

/// What the message puts in its MIME header section: the subject, every recipient's name and
/// address, the custom headers. Exchange adds its own on top, so this errs on the small side.
fn header_section_bytes(msg: &Value) -> usize {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map_or(0, str::len);
    let recipient = |r: &Value| {
        let e = get_ci(r, "emailAddress");
        text(e.and_then(|e| get_ci(e, "name"))) + text(e.and_then(|e| get_ci(e, "address")))
    };
    let mut n = text(get_ci(msg, "subject"));
    for prop in ["toRecipients", "ccRecipients", "bccRecipients", "replyTo"] {
        n += get_ci(msg, prop)
            .and_then(Value::as_array)
            .map_or(0, |a| a.iter().map(recipient).sum());
    }
    n += get_ci(msg, "from").map_or(0, recipient);
    n += get_ci(msg, "internetMessageHeaders")
        .and_then(Value::as_array)
        .map_or(0, |a| {
            a.iter()
                .map(|h| text(get_ci(h, "name")) + text(get_ci(h, "value")))
                .sum()
        });
    n
}

/// Structure of a `microsoft.graph.message` (not yet whether it can be sent), and the sizes
/// Exchange limits: the subject, the header section.
pub fn message_resource(msg: &Value) -> Result<(), GraphError> {
    let subject_chars = get_ci(msg, "subject")
        .and_then(Value::as_str)
        .map_or(0, |s| s.chars().count());
    if subject_chars > MAX_SUBJECT_CHARS {
        return Err(GraphError::new(
            400,
            "ErrorInvalidProperty",
            format!(
                "(fake Graph) The subject has {subject_chars} characters; Exchange's limit is {MAX_SUBJECT_CHARS}."
            ),
        ));
    }
    let header_bytes = header_section_bytes(msg);
    if header_bytes > MAX_HEADER_SECTION_BYTES {
        return Err(GraphError::new(
            400,
            "ErrorMessageSizeExceeded",
            format!(
                "(fake Graph) 552 5.3.4 Header size exceeds fixed maximum size: {header_bytes} bytes of subject, addresses and headers, limit {MAX_HEADER_SECTION_BYTES}."
            ),
        ));
    }
    let obj = expect_object("message", msg)?.ok_or_else(|| {
        GraphError::new(
            400,
            "ErrorInvalidParameter",
            "The value of the parameter 'Message' is empty.",
        )
    })?;
    check_odata_type(obj, "microsoft.graph.message")?;
    for (k, v) in obj {
        if is_annotation(k) {
            continue;
        }
        let Some((name, kind)) = MESSAGE_PROPS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
        else {
            return Err(no_property(k, "microsoft.graph.message"));
        };
        match kind {
            Kind::Str => expect_string(name, v)?,
            Kind::Bool => expect_bool(name, v)?,
            Kind::Body => item_body(name, v)?,
            Kind::Recipients => {
                if let Some(a) = expect_array(name, v)? {
                    for r in a {
                        recipient(name, r)?;
                    }
                }
            }
            Kind::Recipient => recipient(name, v)?,
            Kind::Importance => expect_enum(
                name,
                v,
                "microsoft.graph.importance",
                &["low", "normal", "high"],
            )?,
            Kind::Inference => expect_enum(
                name,
                v,
                "microsoft.graph.inferenceClassificationType",
                &["focused", "other"],
            )?,
            Kind::Headers => internet_message_headers(v)?,
            Kind::Attachments => {
                if let Some(a) = expect_array(name, v)? {
                    if a.len() > 250 {
                        return Err(GraphError::new(
                            400,
                            "ErrorInvalidRequest",
                            "(fake Graph) Exchange allows at most 250 attachments per message.",
                        ));
                    }
                    for att in a {
                        file_attachment(att)?;
                    }
                }
            }
            Kind::Strings => {
                if let Some(a) = expect_array(name, v)? {
                    for s in a {
                        expect_string(name, s)?;
                    }
                }
            }
            Kind::ExtProps => {
                if let Some(a) = expect_array(name, v)? {
                    for p in a {
                        let o = expect_object(name, p)?;
                        for (pk, pv) in o.into_iter().flatten() {
                            match pk.to_ascii_lowercase().as_str() {
                                "id" | "value" => expect_string(pk, pv)?,
                                _ if is_annotation(pk) => {}
                                _ => {
                                    return Err(no_property(
                                        pk,
                                        "microsoft.graph.singleValueLegacyExtendedProperty",
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            Kind::AnyObject => {
                expect_object(name, v)?;
            }
            Kind::AnyArray => {
                expect_array(name, v)?;
            }
        }
    }
    Ok(())
}

fn item_body(prop: &str, v: &Value) -> Result<(), GraphError> {
    let Some(obj) = expect_object(prop, v)? else {
        return Ok(());
    };
    check_odata_type(obj, "microsoft.graph.itemBody")?;
    for (k, v) in obj {
        match k.to_ascii_lowercase().as_str() {
            "contenttype" => expect_enum(k, v, "microsoft.graph.bodyType", &["text", "html"])?,
            "content" => expect_string(k, v)?,
            _ if is_annotation(k) => {}
            _ => return Err(no_property(k, "microsoft.graph.itemBody")),
        }
    }
    Ok(())
}

fn recipient(prop: &str, v: &Value) -> Result<(), GraphError> {
    let Some(obj) = expect_object(prop, v)? else {
        return Ok(());
    };
    check_odata_type(obj, "microsoft.graph.recipient")?;
    for (k, v) in obj {
        match k.to_ascii_lowercase().as_str() {
            "emailaddress" => {
                let Some(e) = expect_object(k, v)? else {
                    continue;
                };
                check_odata_type(e, "microsoft.graph.emailAddress")?;
                for (ek, ev) in e {
                    match ek.to_ascii_lowercase().as_str() {
                        "address" | "name" => expect_string(ek, ev)?,
                        _ if is_annotation(ek) => {}
                        _ => return Err(no_property(ek, "microsoft.graph.emailAddress")),
                    }
                }
            }
            _ if is_annotation(k) => {}
            _ => return Err(no_property(k, "microsoft.graph.recipient")),
        }
    }
    Ok(())
}

/// `internetMessageHeaders`: 1..=5 entries, each `{name, value}` with an `x-` name.
pub fn internet_message_headers(v: &Value) -> Result<(), GraphError> {
    let Some(a) = expect_array("internetMessageHeaders", v)? else {
        return Ok(());
    };
    if a.is_empty() || a.len() > 5 {
        return Err(GraphError::new(
            400,
            "InvalidInternetMessageHeaderCollection",
            super::HEADER_COLLECTION_MESSAGE,
        ));
    }
    for h in a {
        let Some(obj) = expect_object("internetMessageHeaders", h)? else {
            return Err(read_err(
                "(fake Graph) null entry in internetMessageHeaders.",
            ));
        };
        let mut name = None;
        for (k, v) in obj {
            match k.to_ascii_lowercase().as_str() {
                "name" => {
                    expect_string(k, v)?;
                    name = v.as_str();
                }
                "value" => expect_string(k, v)?,
                _ if is_annotation(k) => {}
                _ => return Err(no_property(k, "microsoft.graph.internetMessageHeader")),
            }
        }
        let name = name.unwrap_or("");
        if !name.to_ascii_lowercase().starts_with("x-") {
            return Err(GraphError::new(
                400,
                "InvalidInternetMessageHeader",
                format!(
                    "The internet message header name '{name}' should start with 'x-' or 'X-'."
                ),
            ));
        }
    }
    Ok(())
}

/// A `#microsoft.graph.fileAttachment`; returns the decoded bytes.
pub fn file_attachment(v: &Value) -> Result<Vec<u8>, GraphError> {
    let Some(obj) = expect_object("attachments", v)? else {
        return Err(read_err("(fake Graph) null entry in attachments."));
    };
    let ty = obj.get("@odata.type").and_then(Value::as_str).unwrap_or("");
    let ty_name = ty.trim_start_matches('#');
    if ty.is_empty() {
        return Err(read_err(
            "Cannot create an abstract class. An attachment must name its concrete type in '@odata.type', e.g. '#microsoft.graph.fileAttachment'.",
        ));
    }
    if !ty_name.eq_ignore_ascii_case("microsoft.graph.fileAttachment") {
        return Err(GraphError::new(
            400,
            "RequestBodyRead",
            format!("(fake Graph) only #microsoft.graph.fileAttachment is modelled; got '{ty}'."),
        ));
    }
    let mut name = None;
    let mut bytes = None;
    for (k, v) in obj {
        match k.to_ascii_lowercase().as_str() {
            "name" => {
                expect_string(k, v)?;
                name = v.as_str();
            }
            "contentbytes" => match v {
                Value::String(s) => bytes = Some(STANDARD.decode(s).map_err(|_| {
                    let shown: String = s.chars().take(40).collect();
                    read_err(format!(
                        "Cannot convert the literal '{shown}' to the expected type 'Edm.Binary'."
                    ))
                })?),
                Value::Null => {}
                other => return Err(unexpected_node(k, other, "PrimitiveValue")),
            },
            "contenttype" | "contentid" | "contentlocation" | "id" | "lastmodifieddatetime" => {
                expect_string(k, v)?
            }
            "isinline" => expect_bool(k, v)?,
            "size" => {
                if !(v.is_i64() || v.is_u64() || v.is_null()) {
                    return Err(read_err(
                        "Cannot convert a primitive value to the expected type 'Edm.Int32'. See the inner exception for more details.",
                    ));
                }
            }
            _ if is_annotation(k) => {}
            _ => return Err(no_property(k, "microsoft.graph.fileAttachment")),
        }
    }
    if name.is_none() {
        return Err(GraphError::new(
            400,
            "ErrorRequiredPropertyMissing",
            "Required property is missing. PropertyName = Name",
        ));
    }
    bytes.ok_or_else(|| {
        GraphError::new(
            400,
            "ErrorRequiredPropertyMissing",
            "Required property is missing. PropertyName = ContentBytes",
        )
    })
}

/// What `createUploadSession` was asked for.
pub struct AttachmentItem {
    pub name: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub is_inline: bool,
    pub content_id: Option<String>,
}

/// The `createUploadSession` action body: `{"AttachmentItem": {...}}`.
pub fn create_upload_session(body: &Value) -> Result<AttachmentItem, GraphError> {
    let Some(obj) = body.as_object() else {
        return Err(read_err("A 'StartObject' node was expected."));
    };
    let mut item = None;
    for (k, v) in obj {
        if k.eq_ignore_ascii_case("attachmentItem") {
            item = Some(v);
        } else if !is_annotation(k) {
            return Err(read_err(format!(
                "The parameter '{k}' in the request payload is not a valid parameter for the operation 'createUploadSession'."
            )));
        }
    }
    let Some(Value::Object(item)) = item else {
        return Err(GraphError::new(
            400,
            "ErrorInvalidParameter",
            "The value of the parameter 'AttachmentItem' is empty.",
        ));
    };
    let mut out = AttachmentItem {
        name: String::new(),
        size: 0,
        content_type: None,
        is_inline: false,
        content_id: None,
    };
    let (mut has_type, mut has_name, mut has_size) = (false, false, false);
    for (k, v) in item {
        match k.to_ascii_lowercase().as_str() {
            "attachmenttype" => {
                expect_enum(
                    k,
                    v,
                    "microsoft.graph.attachmentType",
                    &["file", "item", "reference"],
                )?;
                if !v.as_str().unwrap_or("").eq_ignore_ascii_case("file") {
                    return Err(read_err(format!(
                        "(fake Graph) only attachmentType 'file' is modelled; got {v}."
                    )));
                }
                has_type = true;
            }
            "name" => {
                expect_string(k, v)?;
                out.name = v.as_str().unwrap_or("").to_string();
                has_name = v.is_string();
            }
            "size" => {
                out.size = v.as_u64().ok_or_else(|| {
                    read_err("Cannot convert a primitive value to the expected type 'Edm.Int64'. See the inner exception for more details.")
                })?;
                has_size = true;
            }
            "contenttype" => {
                expect_string(k, v)?;
                out.content_type = v.as_str().map(str::to_string);
            }
            "contentid" => {
                expect_string(k, v)?;
                out.content_id = v.as_str().map(str::to_string);
            }
            "isinline" => {
                expect_bool(k, v)?;
                out.is_inline = v.as_bool().unwrap_or(false);
            }
            _ if is_annotation(k) => {}
            _ => return Err(no_property(k, "microsoft.graph.attachmentItem")),
        }
    }
    if !has_type || !has_name || !has_size {
        let missing = if !has_type {
            "AttachmentType"
        } else if !has_name {
            "Name"
        } else {
            "Size"
        };
        return Err(GraphError::new(
            400,
            "ErrorRequiredPropertyMissing",
            format!("Required property is missing. PropertyName = {missing}"),
        ));
    }
    Ok(out)
}

/// Whether Exchange could resolve this as one SMTP address.
pub fn plausible_address(a: &str) -> bool {
    if a.is_empty() || a.trim() != a {
        return false;
    }
    if a.chars()
        .any(|c| c.is_whitespace() || matches!(c, ',' | ';' | '<' | '>' | '(' | ')'))
    {
        return false;
    }
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.contains('@')
}

/// What Graph checks when a message is submitted: at least one recipient, each resolvable,
/// and at most 500 in all.
pub fn sendable_recipients(msg: &Value) -> Result<(), GraphError> {
    let mut n = 0;
    for prop in ["toRecipients", "ccRecipients", "bccRecipients"] {
        for r in get_ci(msg, prop)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            n += 1;
            let addr = get_ci(r, "emailAddress")
                .and_then(|e| get_ci(e, "address"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !plausible_address(addr) {
                return Err(GraphError::new(
                    400,
                    "ErrorInvalidRecipients",
                    format!(
                        "At least one recipient isn't valid., Recipient '{addr}' isn't resolved. All recipients must be resolved before a message can be submitted."
                    ),
                ));
            }
        }
    }
    for r in get_ci(msg, "replyTo")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let addr = get_ci(r, "emailAddress")
            .and_then(|e| get_ci(e, "address"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !plausible_address(addr) {
            return Err(GraphError::new(
                400,
                "ErrorInvalidRecipients",
                format!(
                    "At least one recipient isn't valid., Recipient '{addr}' isn't resolved. All recipients must be resolved before a message can be submitted."
                ),
            ));
        }
    }
    if n == 0 {
        return Err(GraphError::new(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid., A message can't be sent because it contains no recipients.",
        ));
    }
    if n > MAX_RECIPIENTS {
        return Err(GraphError::new(
            400,
            "ErrorInvalidRecipients",
            format!(
                "(fake Graph) The message has {n} recipients; Exchange Online allows at most {MAX_RECIPIENTS} per message."
            ),
        ));
    }
    Ok(())
}
