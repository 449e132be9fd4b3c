//! Serde types for the Microsoft Graph `message` JSON that convert builds and deliver sends:
//! camelCase, empty lists and unset options left out (Graph rejects an empty
//! `internetMessageHeaders`). Plain data; never does I/O.

use serde::{Deserialize, Serialize};

/// The `@odata.type` every attachment we create carries.
pub const FILE_ATTACHMENT_ODATA_TYPE: &str = "#microsoft.graph.fileAttachment";

/// Body of `POST {mailbox}/sendMail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMail {
    pub message: Message,
    pub save_to_sent_items: bool,
}

/// A Graph `message`, with only the fields a relay sets. Also the body of
/// `POST {mailbox}/messages` (draft path).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub body: ItemBody,
    /// Set only when the mail goes out as the mailbox it is posted to (see `convert::sender`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Recipient>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_recipients: Vec<Recipient>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc_recipients: Vec<Recipient>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc_recipients: Vec<Recipient>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<Recipient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<Importance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_receipt_requested: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_delivery_receipt_requested: Option<bool>,
    /// At most 5, every name starting with `x-`/`X-`; never serialized when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internet_message_headers: Vec<InternetMessageHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<FileAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemBody {
    pub content_type: BodyType,
    pub content: String,
}

impl Default for ItemBody {
    fn default() -> Self {
        ItemBody {
            content_type: BodyType::Text,
            content: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    Text,
    Html,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    Low,
    Normal,
    High,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    pub email_address: EmailAddress,
}

impl Recipient {
    pub fn new(address: impl Into<String>, name: Option<String>) -> Self {
        Recipient {
            email_address: EmailAddress {
                address: address.into(),
                name,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailAddress {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternetMessageHeader {
    pub name: String,
    pub value: String,
}

/// `#microsoft.graph.fileAttachment`. Build with [`FileAttachment::new`] so `@odata.type` is right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileAttachment {
    #[serde(rename = "@odata.type")]
    pub odata_type: String,
    pub name: String,
    pub content_type: String,
    /// Standard base64 of the decoded attachment bytes.
    pub content_bytes: String,
    pub is_inline: bool,
    /// Without angle brackets; the HTML body refers to it as `cid:VALUE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

impl FileAttachment {
    pub fn new(
        name: impl Into<String>,
        content_type: impl Into<String>,
        bytes: &[u8],
        is_inline: bool,
        content_id: Option<String>,
    ) -> Self {
        use base64::Engine as _;
        FileAttachment {
            odata_type: FILE_ATTACHMENT_ODATA_TYPE.to_string(),
            name: name.into(),
            content_type: content_type.into(),
            content_bytes: base64::engine::general_purpose::STANDARD.encode(bytes),
            is_inline,
            content_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_lists_and_unset_fields_are_left_out() {
        let msg = Message {
            subject: Some("Hi".into()),
            to_recipients: vec![Recipient::new("a@example.com", None)],
            ..Default::default()
        };
        let json = serde_json::to_value(SendMail {
            message: msg,
            save_to_sent_items: false,
        })
        .expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "message": {
                    "subject": "Hi",
                    "body": {"contentType": "text", "content": ""},
                    "toRecipients": [{"emailAddress": {"address": "a@example.com"}}]
                },
                "saveToSentItems": false
            })
        );
    }

    #[test]
    fn file_attachment_has_odata_type_and_base64() {
        let a = FileAttachment::new("a.txt", "text/plain", b"hi", true, Some("x@y".into()));
        let json = serde_json::to_value(&a).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "a.txt",
                "contentType": "text/plain",
                "contentBytes": "aGk=",
                "isInline": true,
                "contentId": "x@y"
            })
        );
    }
}
