//! A contact's file (XEP-0066 link) into Matrix: fetched with the checks of `crate::media`,
//! streamed into the homeserver's media repository, posted as the right `msgtype` with its
//! `info`.

use bytes::Bytes;
use futures_util::StreamExt;
use ruma::UserId;
use serde_json::{Value, json};

use crate::context::Bridge;
use crate::matrix::MatrixError;
use crate::media;

/// Bytes looked at to tell a file's type and an image's size.
const HEAD: usize = 64 * 1024;
/// The whole fetch and upload, at most: under the outbox's claim on the message (two minutes),
/// so a slow server never makes a second delivery start beside the first.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(100);

/// Why a contact's file did not reach Matrix.
#[derive(Debug)]
pub(super) enum FileError {
    /// It cannot be brought over (refused, too large, its server failed): the link is posted
    /// with a notice saying this.
    Refused(String),
    /// The homeserver failed in a way worth retrying the whole message for.
    Retry(MatrixError),
}

impl From<String> for FileError {
    fn from(reason: String) -> Self {
        Self::Refused(reason)
    }
}

impl Bridge {
    /// Fetches the file at `url` and uploads it to the homeserver as `uploader`; returns the
    /// message content for it, or why it could not be brought over.
    pub(super) async fn file_into_matrix(
        &self,
        url: &str,
        uploader: &UserId,
    ) -> Result<Value, FileError> {
        let work = async {
            // A few at a time: slow servers must not hold every delivery task.
            let _slot = self
                .inner
                .media_fetches
                .acquire()
                .await
                .map_err(|e| FileError::Refused(e.to_string()))?;
            self.fetch_and_upload(url, uploader).await
        };
        tokio::time::timeout(DEADLINE, work)
            .await
            .unwrap_or_else(|_| {
                Err(FileError::Refused(format!(
                    "fetching and storing it took more than {} s",
                    DEADLINE.as_secs()
                )))
            })
    }

    async fn fetch_and_upload(&self, url: &str, uploader: &UserId) -> Result<Value, FileError> {
        let config = &self.inner.config.bridge;
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a link ({e})"))?;
        let address = media::checked_address(&parsed, config.media_from_private_addresses).await?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        // What was checked is where it connects: no second lookup, no redirect elsewhere.
        let client = reqwest::Client::builder()
            .resolve(&host, address)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would look the name up again, elsewhere.
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot make an HTTP client ({e})"))?;
        let response = client
            .get(parsed.clone())
            .send()
            .await
            .map_err(|e| format!("cannot fetch it ({e})"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("its server answered {status}").into());
        }
        let max = config.max_media_bytes;
        let length = response.content_length();
        if length.is_some_and(|n| n > max) {
            return Err(format!("it is larger than this bridge takes ({max} bytes)").into());
        }
        let declared = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut stream = response.bytes_stream();
        // The first bytes tell the type and an image's size; they go first into the upload.
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0;
        while head_len < HEAD {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    head_len += chunk.len();
                    head.push(chunk);
                }
                Some(Err(e)) => return Err(format!("the download broke off ({e})").into()),
                None => break,
            }
        }
        let first: Vec<u8> = head.iter().flat_map(|c| c.iter().copied()).collect();
        let mime = media::sniff(&first, declared.as_deref());
        let size = media::image_size(&first);
        let name = file_name(&parsed);
        let body =
            futures_util::stream::iter(head.into_iter().map(Ok::<_, reqwest::Error>)).chain(stream);
        let body = media::capped(body, max);
        // Synapse takes an upload only with its length: without one from the contact's
        // server, the file is written to a temporary file first (capped, deleted after).
        let (upload, length, spool) = match length {
            Some(n) => (reqwest::Body::wrap_stream(body), n, None),
            None => {
                let spool = Spool::write(Box::pin(body)).await?;
                let file = tokio::fs::File::open(&spool.path)
                    .await
                    .map_err(|e| format!("cannot read the temporary copy ({e})"))?;
                (reqwest::Body::from(file), spool.len, Some(spool))
            }
        };
        let stored = self
            .inner
            .matrix
            .upload_stream(uploader, upload, Some(length), &mime, &name)
            .await;
        drop(spool);
        let mxc = stored.map_err(|e| match e.is_transient() {
            true => FileError::Retry(e),
            false => FileError::Refused(format!("the homeserver did not take it ({e})")),
        })?;
        let mut info = json!({"mimetype": mime, "size": length});
        if let Some((w, h)) = size {
            info["w"] = json!(w);
            info["h"] = json!(h);
        }
        Ok(json!({
            "msgtype": media::msgtype(&mime),
            "body": name,
            "filename": name,
            "url": mxc.to_string(),
            "info": info,
        }))
    }
}

/// A temporary copy of a download, removed when dropped.
struct Spool {
    path: std::path::PathBuf,
    len: u64,
}

impl Spool {
    async fn write(
        mut body: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Unpin,
    ) -> Result<Self, FileError> {
        use tokio::io::AsyncWriteExt;
        let path = std::env::temp_dir().join(format!(
            "messenger-bridge-{:016x}.part",
            rand::random::<u64>()
        ));
        let mut spool = Self { path, len: 0 };
        let mut file = tokio::fs::File::create(&spool.path)
            .await
            .map_err(|e| format!("cannot write a temporary copy ({e})"))?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("the download broke off ({e})"))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write a temporary copy ({e})"))?;
            spool.len += chunk.len() as u64;
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot write a temporary copy ({e})"))?;
        Ok(spool)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The file's name from its link (the last path segment, decoded), made safe.
fn file_name(url: &reqwest::Url) -> String {
    let last = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default();
    let decoded = percent_decode(last);
    media::safe_name(&decoded)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_comes_from_the_link() {
        let url = reqwest::Url::parse("https://up.example/share/abc/My%20Cat.png?x=1").unwrap();
        assert_eq!(file_name(&url), "My_Cat.png");
        let url = reqwest::Url::parse("https://up.example/").unwrap();
        assert_eq!(file_name(&url), "file");
    }
}
