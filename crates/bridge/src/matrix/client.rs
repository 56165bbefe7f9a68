//! The homeserver's client-server API, called as the appservice: ruma request types, sent with
//! reqwest, with identity assertion (`?user_id=`) for ghosts and `ts` for delayed messages.

use std::borrow::Cow;
use std::time::Duration;

use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::client::{
    account, appservice, discovery, media, membership, message, presence, profile, receipt, redact,
    relations, room, state, typing,
};
use ruma::api::path_builder::{PathBuilder, SinglePath, VersionHistory};
use ruma::api::{
    AppserviceUserIdentity, IncomingResponse, OutgoingRequest, OutgoingRequestAppserviceExt,
    SupportedVersions,
};
use ruma::events::AnyMessageLikeEventContent;
use ruma::presence::PresenceState;
use ruma::serde::Raw;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedMxcUri, OwnedRoomId, OwnedUserId,
    RoomId, UInt, UserId,
};
use serde::Deserialize;

/// A failed call to the homeserver.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The homeserver could not be reached or the connection broke.
    #[error("cannot reach the homeserver at {url}: {reason}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The homeserver answered with an error.
    #[error("the homeserver refused {what}: {errcode} ({status}): {message}")]
    Refused {
        /// What we asked for.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// Matrix `errcode`.
        errcode: String,
        /// Matrix `error` text.
        message: String,
        /// `retry_after_ms` of a rate limit.
        retry_after: Option<Duration>,
    },
    /// The homeserver's answer could not be understood, or our request could not be built.
    #[error("bad data while talking to the homeserver ({what}): {reason}")]
    Invalid {
        /// What we asked for.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl MatrixError {
    /// Whether trying again later may succeed (network trouble, 5xx, rate limits).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused {
                status, errcode, ..
            } => *status >= 500 || *status == 429 || errcode == "M_LIMIT_EXCEEDED",
            Self::Invalid { .. } => false,
        }
    }

    /// The Matrix error code, if the homeserver sent one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Self::Refused { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
}

/// Supplies a ruma path builder's input from the homeserver's supported versions.
pub trait PathInput: PathBuilder {
    /// The input for this builder.
    fn input(versions: &SupportedVersions) -> Self::Input<'_>;
}

impl PathInput for VersionHistory {
    fn input(versions: &SupportedVersions) -> Self::Input<'_> {
        Cow::Borrowed(versions)
    }
}

impl PathInput for SinglePath {
    fn input(_: &SupportedVersions) -> Self::Input<'_> {}
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errcode: String,
    #[serde(default)]
    error: String,
    retry_after_ms: Option<u64>,
}

/// The appservice's client for the homeserver. Cheap to clone. `Debug` hides the token.
#[derive(Clone)]
pub struct MatrixClient {
    http: reqwest::Client,
    base: String,
    as_token: String,
    appservice_id: String,
    versions: SupportedVersions,
    /// Signs of homeserver outages, shared by every clone (see [`super::outage`]).
    outages: std::sync::Arc<super::outage::Outages>,
}

impl std::fmt::Debug for MatrixClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatrixClient")
            .field("base", &self.base)
            .field("appservice_id", &self.appservice_id)
            .field("as_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl MatrixClient {
    /// The same homeserver with another appservice's token: the double-puppet registration,
    /// whose namespace covers local users (requests as `?user_id=` one of them).
    pub fn with_token(&self, as_token: &str, appservice_id: &str) -> Self {
        Self {
            as_token: as_token.to_owned(),
            appservice_id: appservice_id.to_owned(),
            ..self.clone()
        }
    }

    /// Connects: asks the homeserver which spec versions it supports (which also proves it is
    /// reachable).
    pub async fn connect(
        base: &str,
        as_token: &str,
        appservice_id: &str,
    ) -> Result<Self, MatrixError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| MatrixError::Invalid {
                what: "the HTTP client",
                reason: e.to_string(),
            })?;
        let mut client = Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            as_token: as_token.to_owned(),
            appservice_id: appservice_id.to_owned(),
            versions: SupportedVersions::from_parts(&["v1.1".to_owned()], &Default::default()),
            outages: Default::default(),
        };
        let versions = client
            .send(discovery::get_supported_versions::Request::new(), None)
            .await?;
        client.versions = versions.as_supported_versions();
        Ok(client)
    }

    /// The homeserver's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Signs of homeserver outages not caught up yet.
    pub(crate) fn outages(&self) -> &super::outage::Outages {
        &self.outages
    }

    /// Sends any client-server request as the bot (`user = None`) or as a ghost.
    pub async fn send<R>(
        &self,
        request: R,
        user: Option<&UserId>,
    ) -> Result<R::IncomingResponse, MatrixError>
    where
        R: OutgoingRequest,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        // e.g. "ruma_client_api::message::send_message_event::v3::Request" → "send_message_event"
        let name: &'static str = std::any::type_name::<R>();
        let what = name
            .trim_end_matches("::Request")
            .rsplit("::")
            .nth(1)
            .unwrap_or(name);
        let identity = user.map(AppserviceUserIdentity::new).unwrap_or_default();
        let request: http::Request<Vec<u8>> = request
            .try_into_http_request_with_identity(
                &self.base,
                SendAccessToken::Appservice(&self.as_token),
                identity,
                R::PathBuilder::input(&self.versions),
            )
            .map_err(|e| MatrixError::Invalid {
                what,
                reason: e.to_string(),
            })?;
        let request = reqwest::Request::try_from(request).map_err(|e| MatrixError::Invalid {
            what,
            reason: e.to_string(),
        })?;
        // A refused or broken connection is a sign of a restart; a slow answer is not.
        let unreachable = |e: reqwest::Error| {
            if !e.is_timeout() {
                self.outages.note(super::outage::Seen::Unreachable);
            }
            MatrixError::Unreachable {
                url: self.base.clone(),
                reason: error_chain(&e),
            }
        };
        let response = self.http.execute(request).await.map_err(unreachable)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
            // A proxy's own page while the homeserver behind it restarts; the homeserver's own
            // 502 or 504 (a remote server failed) is a Matrix error.
            if matches!(status.as_u16(), 502..=504)
                && parsed.as_ref().is_none_or(|p| p.errcode.is_empty())
            {
                self.outages.note(super::outage::Seen::Unreachable);
            }
            let parsed = parsed.unwrap_or(ErrorBody {
                errcode: "M_UNKNOWN".into(),
                error: String::from_utf8_lossy(&body).chars().take(200).collect(),
                retry_after_ms: None,
            });
            return Err(MatrixError::Refused {
                what,
                status: status.as_u16(),
                errcode: parsed.errcode,
                message: parsed.error,
                retry_after: parsed.retry_after_ms.map(Duration::from_millis),
            });
        }
        let mut builder = http::Response::builder().status(status);
        if let Some(h) = builder.headers_mut() {
            *h = headers;
        }
        let response = builder
            .body(body.to_vec())
            .map_err(|e| MatrixError::Invalid {
                what,
                reason: e.to_string(),
            })?;
        R::IncomingResponse::try_from_http_response(response).map_err(|e| MatrixError::Invalid {
            what,
            reason: e.to_string(),
        })
    }

    /// `POST /_matrix/client/v1/appservice/{id}/ping`: the homeserver calls us back, proving both
    /// directions work.
    pub async fn ping(&self) -> Result<Duration, MatrixError> {
        let mut request = appservice::request_ping::v1::Request::new(self.appservice_id.clone());
        request.transaction_id = Some(<ruma::OwnedTransactionId>::from(format!(
            "ping-{}",
            rand::random::<u32>()
        )));
        Ok(self.send(request, None).await?.duration)
    }

    /// Registers a user in the appservice's namespace; an existing user is fine.
    pub async fn register(&self, localpart: &str) -> Result<(), MatrixError> {
        let mut request = account::register::v3::Request::new();
        request.username = Some(localpart.to_owned());
        request.inhibit_login = true;
        request.login_type = Some(account::register::LoginType::ApplicationService);
        match self.send(request, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets a user's display name.
    pub async fn set_display_name(&self, user: &UserId, name: &str) -> Result<(), MatrixError> {
        #[allow(deprecated)]
        let request =
            profile::set_display_name::v3::Request::new(user.to_owned(), Some(name.to_owned()));
        self.send(request, Some(user)).await.map(|_| ())
    }

    /// Sets a user's avatar.
    pub async fn set_avatar_url(&self, user: &UserId, mxc: OwnedMxcUri) -> Result<(), MatrixError> {
        #[allow(deprecated)]
        let request = profile::set_avatar_url::v3::Request::new(user.to_owned(), Some(mxc));
        self.send(request, Some(user)).await.map(|_| ())
    }

    /// Uploads media as `user`.
    pub async fn upload(
        &self,
        user: &UserId,
        data: Vec<u8>,
        mime: &str,
    ) -> Result<OwnedMxcUri, MatrixError> {
        #[allow(deprecated)]
        let mut request = media::create_content::v3::Request::new(data);
        request.content_type = Some(mime.to_owned());
        Ok(self.send(request, Some(user)).await?.content_uri)
    }

    /// Starts downloading a file of the homeserver (`mxc://server/id`) as the appservice
    /// (authenticated media, Matrix 1.11); the body is read by the caller, as a stream.
    pub async fn download(&self, mxc: &str) -> Result<reqwest::Response, MatrixError> {
        let invalid = |reason: String| MatrixError::Invalid {
            what: "media download",
            reason,
        };
        let (server, media_id) = <&ruma::MxcUri>::from(mxc)
            .parts()
            .map_err(|e| invalid(format!("not a valid mxc:// URI ({e}): {mxc}")))?;
        let mut url =
            reqwest::Url::parse(&format!("{}/", self.base)).map_err(|e| invalid(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| invalid("the homeserver URL cannot have a path".into()))?
            .pop_if_empty()
            .extend([
                "_matrix",
                "client",
                "v1",
                "media",
                "download",
                server.as_str(),
                media_id,
            ]);
        // A large file to a slow reader takes long: the client's 60 s cap is for API calls.
        let request = self.http.get(url).timeout(Duration::from_secs(3600));
        self.raw_request(request, "media download").await
    }

    /// Uploads a file to the homeserver as `user` from a stream of `length` bytes (when
    /// known), without holding it whole.
    pub async fn upload_stream(
        &self,
        user: &UserId,
        body: reqwest::Body,
        length: Option<u64>,
        mime: &str,
        filename: &str,
    ) -> Result<OwnedMxcUri, MatrixError> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/_matrix/media/v3/upload", self.base),
            [("filename", filename), ("user_id", user.as_str())],
        )
        .map_err(|e| MatrixError::Invalid {
            what: "media upload",
            reason: e.to_string(),
        })?;
        let mut request = self
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, mime)
            // An upload may take long: the client's 60 s cap is for API calls.
            .timeout(Duration::from_secs(3600))
            .body(body);
        if let Some(n) = length {
            request = request.header(http::header::CONTENT_LENGTH, n);
        }
        let response = self.raw_request(request, "media upload").await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| MatrixError::Unreachable {
                url: self.base.clone(),
                reason: error_chain(&e),
            })?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| MatrixError::Invalid {
                what: "media upload",
                reason: e.to_string(),
            })?;
        body["content_uri"]
            .as_str()
            .map(OwnedMxcUri::from)
            .ok_or_else(|| MatrixError::Invalid {
                what: "media upload",
                reason: "no content_uri in the answer".into(),
            })
    }

    /// Sends a request built by hand (media) with the appservice token; an error status is
    /// turned into [`MatrixError::Refused`].
    async fn raw_request(
        &self,
        request: reqwest::RequestBuilder,
        what: &'static str,
    ) -> Result<reqwest::Response, MatrixError> {
        let response = request
            .bearer_auth(&self.as_token)
            .send()
            .await
            .map_err(|e| MatrixError::Unreachable {
                url: self.base.clone(),
                reason: error_chain(&e),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or(ErrorBody {
            errcode: "M_UNKNOWN".into(),
            error: String::from_utf8_lossy(&body).chars().take(200).collect(),
            retry_after_ms: None,
        });
        Err(MatrixError::Refused {
            what,
            status: status.as_u16(),
            errcode: parsed.errcode,
            message: parsed.error,
            retry_after: parsed.retry_after_ms.map(Duration::from_millis),
        })
    }

    /// Names a room, as `sender` (who must have the power to).
    pub async fn set_room_name(
        &self,
        sender: &UserId,
        room: &RoomId,
        name: &str,
    ) -> Result<(), MatrixError> {
        let content = ruma::events::room::name::RoomNameEventContent::new(name.to_owned());
        let request = state::send_state_event::v3::Request::new(
            room.to_owned(),
            &ruma::events::EmptyStateKey,
            &content,
        )
        .map_err(|e| MatrixError::Invalid {
            what: "a room name",
            reason: e.to_string(),
        })?;
        self.send(request, Some(sender)).await.map(|_| ())
    }

    /// Creates a room as `creator`.
    pub async fn create_room(
        &self,
        creator: &UserId,
        request: room::create_room::v3::Request,
    ) -> Result<OwnedRoomId, MatrixError> {
        Ok(self.send(request, Some(creator)).await?.room_id)
    }

    /// Invites `invitee` to a room, as `inviter`.
    pub async fn invite(
        &self,
        inviter: &UserId,
        room: &RoomId,
        invitee: &UserId,
    ) -> Result<(), MatrixError> {
        let recipient = membership::invite_user::v3::InvitationRecipient::UserId(
            membership::invite_user::v3::InviteUserId::new(invitee.to_owned()),
        );
        let request = membership::invite_user::v3::Request::new(room.to_owned(), recipient);
        match self.send(request, Some(inviter)).await {
            Ok(_) => Ok(()),
            // Already in the room or already invited.
            Err(MatrixError::Refused {
                status: 403,
                message,
                ..
            }) if message.contains("already in the room") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Joins a room as `user`.
    pub async fn join(&self, user: &UserId, room: &RoomId) -> Result<(), MatrixError> {
        self.send(
            membership::join_room_by_id::v3::Request::new(room.to_owned()),
            Some(user),
        )
        .await
        .map(|_| ())
    }

    /// Leaves a room as `user`.
    pub async fn leave(&self, user: &UserId, room: &RoomId) -> Result<(), MatrixError> {
        self.send(
            membership::leave_room::v3::Request::new(room.to_owned()),
            Some(user),
        )
        .await
        .map(|_| ())
    }

    /// Sends a message-like event as `sender`, with a transaction id that makes retries
    /// idempotent and an optional original timestamp.
    pub async fn send_message(
        &self,
        sender: &UserId,
        room: &RoomId,
        txn_id: &str,
        content: Raw<AnyMessageLikeEventContent>,
        event_type: &str,
        ts: Option<i64>,
    ) -> Result<OwnedEventId, MatrixError> {
        let mut request = message::send_message_event::v3::Request::new_raw(
            room.to_owned(),
            <ruma::OwnedTransactionId>::from(txn_id.to_owned()),
            event_type.into(),
            content,
        );
        request.timestamp = ts
            .and_then(|ms| UInt::new(ms.max(0) as u64))
            .map(MilliSecondsSinceUnixEpoch);
        Ok(self.send(request, Some(sender)).await?.event_id)
    }

    /// One event of a room, as JSON, read as `user`.
    pub async fn event(
        &self,
        user: &UserId,
        room: &RoomId,
        event: &EventId,
    ) -> Result<serde_json::Value, MatrixError> {
        let request = room::get_room_event::v3::Request::new(room.to_owned(), event.to_owned());
        let response = self.send(request, Some(user)).await?;
        serde_json::from_str(response.event.json().get()).map_err(|e| MatrixError::Invalid {
            what: "get_room_event",
            reason: e.to_string(),
        })
    }

    /// The reactions (`m.annotation` relations) to an event, as JSON, read as `user`: up to
    /// the last 200.
    pub async fn reactions_to(
        &self,
        user: &UserId,
        room: &RoomId,
        event: &EventId,
    ) -> Result<Vec<serde_json::Value>, MatrixError> {
        self.related(
            user,
            room,
            event,
            ruma::events::relation::RelationType::Annotation,
        )
        .await
    }

    /// The edits (`m.replace` relations) of an event, as JSON, read as `user`: up to the last
    /// 200.
    pub async fn edits_of(
        &self,
        user: &UserId,
        room: &RoomId,
        event: &EventId,
    ) -> Result<Vec<serde_json::Value>, MatrixError> {
        self.related(
            user,
            room,
            event,
            ruma::events::relation::RelationType::Replacement,
        )
        .await
    }

    async fn related(
        &self,
        user: &UserId,
        room: &RoomId,
        event: &EventId,
        rel_type: ruma::events::relation::RelationType,
    ) -> Result<Vec<serde_json::Value>, MatrixError> {
        let mut request = relations::get_relating_events_with_rel_type::v1::Request::new(
            room.to_owned(),
            event.to_owned(),
            rel_type,
        );
        request.limit = Some(UInt::from(200u32));
        let response = self.send(request, Some(user)).await?;
        Ok(response
            .chunk
            .iter()
            .filter_map(|e| serde_json::from_str(e.json().get()).ok())
            .collect())
    }

    /// Marks `event` (and all before it) read by `user`.
    pub async fn read_receipt(
        &self,
        user: &UserId,
        room: &RoomId,
        event: &EventId,
    ) -> Result<(), MatrixError> {
        let request = receipt::create_receipt::v3::Request::new(
            room.to_owned(),
            receipt::create_receipt::v3::ReceiptType::Read,
            event.to_owned(),
        );
        self.send(request, Some(user)).await.map(|_| ())
    }

    /// Redacts an event as `user`, idempotently per `txn_id`.
    pub async fn redact(
        &self,
        user: &UserId,
        room: &RoomId,
        event: &EventId,
        txn_id: &str,
    ) -> Result<(), MatrixError> {
        let request = redact::redact_event::v3::Request::new(
            room.to_owned(),
            event.to_owned(),
            <ruma::OwnedTransactionId>::from(txn_id.to_owned()),
        );
        self.send(request, Some(user)).await.map(|_| ())
    }

    /// The last `limit` events of a room (newest first), as JSON, read as `user`.
    pub async fn recent_events(
        &self,
        user: &UserId,
        room: &RoomId,
        limit: u32,
    ) -> Result<Vec<serde_json::Value>, MatrixError> {
        let mut request = message::get_message_events::v3::Request::backward(room.to_owned());
        request.limit = UInt::from(limit);
        let response = self.send(request, Some(user)).await?;
        Ok(response
            .chunk
            .iter()
            .filter_map(|e| serde_json::from_str(e.json().get()).ok())
            .collect())
    }

    /// Typing on or off for `user` in `room`.
    pub async fn set_typing(
        &self,
        user: &UserId,
        room: &RoomId,
        typing: bool,
        timeout: Duration,
    ) -> Result<(), MatrixError> {
        let state = if typing {
            typing::create_typing_event::v3::Typing::Yes(
                typing::create_typing_event::v3::TypingInfo::new(timeout),
            )
        } else {
            typing::create_typing_event::v3::Typing::No
        };
        let request =
            typing::create_typing_event::v3::Request::new(user.to_owned(), room.to_owned(), state);
        self.send(request, Some(user)).await.map(|_| ())
    }

    /// Sets `user`'s presence.
    pub async fn set_presence(
        &self,
        user: &UserId,
        presence: PresenceState,
        status: Option<String>,
    ) -> Result<(), MatrixError> {
        let mut request = presence::set_presence::v3::Request::new(user.to_owned(), presence);
        request.status_msg = status;
        self.send(request, Some(user)).await.map(|_| ())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Parses a user id, for ids the bridge builds itself.
pub fn user_id(s: &str) -> Result<OwnedUserId, MatrixError> {
    UserId::parse(s).map_err(|e| MatrixError::Invalid {
        what: "a user id",
        reason: format!("{s}: {e}"),
    })
}
