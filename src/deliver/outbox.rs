//! The dry-run transport: writes the requests a plan would make to `<queue.dir>/outbox/<id>.json`
//! instead of calling Graph. A single sendMail is `{"method","url","body"}`; the draft path is
//! `{"requests":[...]}` in order. Split messages add `<id>.<part>.json` for parts after the first.

use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::json;

use super::steps::{describe, steps};
use super::{DeliveryError, Transport};
use crate::convert::GraphPlan;
use crate::spool::{LastError, QueueId};

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

    fn document(&self, plan: &GraphPlan) -> serde_json::Value {
        let mut described: Vec<_> = steps(plan)
            .iter()
            .map(|s| describe(s, &self.graph_url))
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
    async fn send(&self, id: &QueueId, part: usize, plan: &GraphPlan) -> Result<(), DeliveryError> {
        let mut bytes =
            serde_json::to_vec_pretty(&self.document(plan)).expect("JSON always serializes");
        bytes.push(b'\n');
        let path = self.file_for(id, part);
        let dir = self.dir.clone();
        let write = tokio::task::spawn_blocking(move || {
            let tmp = path.with_extension("json.tmp");
            let write_once =
                || std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
            match write_once() {
                // The outbox is made on first use (or again, if someone removed it).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&dir)?;
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
