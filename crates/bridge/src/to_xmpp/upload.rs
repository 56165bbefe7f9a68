//! A Matrix file put on the user's own XMPP server (XEP-0363) when it offers an upload service:
//! streamed from the homeserver's authenticated download into the slot's PUT, never held
//! whole; the contact then gets the server's GET URL, as from any XMPP client. Anything that
//! fails leaves the bridge's own signed link (`crate::media::link`), so the file still goes.

use std::time::Duration;

use xmpp_core::stanza::UploadService;

use crate::context::Bridge;
use crate::mapping::MatrixFile;

impl Bridge {
    /// The upload service of the user's server, as discovery found it at the last login.
    pub(crate) fn upload_service(&self, user: &str) -> Option<UploadService> {
        self.inner
            .upload_services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(user)
            .cloned()
    }
}

/// Uploads `file` to the user's server; its GET URL, or `None` (logged) to send the bridge's
/// link instead.
pub(super) async fn to_users_server(
    bridge: &Bridge,
    user: &str,
    file: &MatrixFile,
) -> Option<String> {
    let service = bridge.upload_service(user)?;
    match upload(bridge, user, &service, file).await {
        Ok(url) => {
            tracing::info!(%user, service = %service.jid, "a file went to the user's XMPP server (XEP-0363)");
            Some(url)
        }
        Err(reason) => {
            tracing::warn!(%user, service = %service.jid, %reason, "could not put a file on the user's XMPP server; sending the bridge's link instead");
            None
        }
    }
}

async fn upload(
    bridge: &Bridge,
    user: &str,
    service: &UploadService,
    file: &MatrixFile,
) -> Result<String, String> {
    let config = &bridge.inner.config.bridge;
    let download = bridge
        .inner
        .matrix
        .download(&file.mxc)
        .await
        .map_err(|e| format!("the homeserver did not give the file ({e})"))?;
    // A slot is for an exact size: a download without a length cannot have one.
    let size = download
        .content_length()
        .ok_or("the homeserver sent the file without a length")?;
    let limit = service
        .max_size
        .unwrap_or(u64::MAX)
        .min(config.max_media_bytes);
    if size > limit {
        return Err(format!("{size} bytes, more than the {limit} allowed"));
    }
    let slot = bridge
        .inner
        .xmpp
        .upload_slot(user, &service.jid, &file.name, size, &file.mime)
        .await
        .map_err(|e| format!("no upload slot ({e})"))?;
    let put = reqwest::Url::parse(&slot.put).map_err(|e| format!("a bad PUT URL ({e})"))?;
    // The server says where: checked like any address the bridge is sent to.
    let address = crate::media::checked_address(&put, config.media_from_private_addresses).await?;
    let client = reqwest::Client::builder()
        .resolve(put.host_str().unwrap_or_default(), address)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| format!("cannot make an HTTP client ({e})"))?;
    let mut request = client
        .put(put)
        .header(http::header::CONTENT_TYPE, &file.mime)
        .header(http::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(download.bytes_stream()));
    for (name, value) in &slot.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("the upload failed ({e})"))?;
    if !response.status().is_success() {
        return Err(format!("the upload service answered {}", response.status()));
    }
    Ok(slot.get)
}
