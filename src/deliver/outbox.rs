//! The dry-run transport: writes the requests a plan would make to `<queue.dir>/outbox/<id>.json`
//! instead of calling Graph. A single sendMail is `{"method","url","body"}`; the draft path is
//! `{"requests":[...]}` in order. Split messages add `<id>.<part>.json` for parts after the first.
//! The documents hold whole messages, so they are private like the spool (0600 in a 0700 folder).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::source::AttachmentReader;
use super::steps::{describe, steps};
use super::{Delivery, DeliveryError, Transport};
use crate::convert::{GraphPlan, LargeAttachment, sha256_hex};
use crate::envelope::QueueId;
use crate::spool::{LastError, create_private_dir, private_file};

pub struct Outbox {
    dir: PathBuf,
    graph_url: String,
}

impl Outbox {
    pub fn new(dir: PathBuf, graph_url: &str) -> Self {
        Outbox {
            dir,
            graph_url: graph_url.to_string(),
        }
    }

    pub fn file_for(&self, id: &QueueId, part: usize) -> PathBuf {
        match part {
            0 => self.dir.join(format!("{id}.json")),
            n => self.dir.join(format!("{id}.{n}.json")),
        }
    }

    /// The requests of `plan`; upload chunks are read from `message` for their sha256.
    /// Blocking.
    fn document(graph_url: &str, plan: &GraphPlan, message: &Path) -> Value {
        // One reader per attachment, kept while its chunks are read in order.
        let mut reader: Option<(String, AttachmentReader)> = None;
        let mut hash = |attachment: &LargeAttachment, range| {
            if reader
                .as_ref()
                .is_none_or(|(name, _)| *name != attachment.name)
            {
                let fresh = AttachmentReader::new(attachment, message);
                reader = Some((attachment.name.clone(), fresh));
            }
            let (_, r) = reader.as_mut().expect("set above");
            match r.read(range) {
                Ok(bytes) => json!(sha256_hex(&bytes)),
                Err(e) => json!(format!("unreadable: {e}")),
            }
        };
        let mut described: Vec<Value> = steps(plan)
            .iter()
            .flat_map(|s| describe(s, graph_url, &mut hash))
            .collect();
        if described.len() == 1 {
            described.remove(0)
        } else {
            json!({ "requests": described })
        }
    }
}

#[async_trait]
impl Transport for Outbox {
    async fn send(&self, d: &Delivery<'_>) -> Result<(), DeliveryError> {
        let path = self.file_for(d.id, d.part);
        let dir = self.dir.clone();
        let (graph_url, plan, message) = (
            self.graph_url.clone(),
            d.plan.clone(),
            d.message.to_path_buf(),
        );
        let write = tokio::task::spawn_blocking(move || {
            let document = Outbox::document(&graph_url, &plan, &message);
            let mut bytes = serde_json::to_vec_pretty(&document).expect("JSON always serializes");
            bytes.push(b'\n');
            let tmp = path.with_extension("json.tmp");
            let write_once = || {
                private_file()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .and_then(|mut f| f.write_all(&bytes))
                    .and_then(|()| std::fs::rename(&tmp, &path))
            };
            match write_once() {
                // The outbox is made at start (or again, if someone removed it).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    create_private_dir(&dir)?;
                    write_once()
                }
                other => other,
            }
        });
        match write.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(outbox_error(e.to_string())),
            Err(e) => Err(outbox_error(e.to_string())),
        }
    }
}

fn outbox_error(message: String) -> DeliveryError {
    DeliveryError::Transient {
        error: LastError {
            status: None,
            code: "OutboxWriteFailed".into(),
            message,
        },
        retry_after: None,
    }
}
