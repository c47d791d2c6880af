//! The control API: HTTP/1.1 with JSON bodies on a Unix socket that only root may use.
//!
//! The server owns no state: every request becomes a [`Request`] sent, in an [`Envelope`], to
//! the one owner of state, and its answer becomes the response.
//!
//! | route                                        | body          | answer                      |
//! | -------------------------------------------- | ------------- | --------------------------- |
//! | `GET  /v1/status`                            |               | 200 [`Status`]              |
//! | `GET  /v1/groups/{group}/backends`           |               | 200 `[`[`BackendStatus`]`]` |
//! | `POST /v1/groups/{group}/backends`           | [`AddBackend`]| 201 [`ChangeResult`]        |
//! | `POST /v1/groups/{group}/backends/remove`    | [`BackendRef`]| 200 [`ChangeResult`]        |
//! | `POST /v1/groups/{group}/backends/drain`     | [`BackendRef`]| 200 [`ChangeResult`]        |
//! | `POST /v1/groups/{group}/backends/weight`    | [`SetWeight`] | 200 [`ChangeResult`]        |
//! | `POST /v1/reload`                            |               | 200 [`ChangeResult`]        |
//! | `GET  /v1/flows?service=&backend=&limit=`    |               | 200 [`crate::flows::FlowList`] |
//! | `GET  /v1/lookup?protocol=&client=&vip=`     |               | 200 [`crate::flows::LookupAnswer`] |
//! | `POST /v1/node/drain`                        |               | 200 [`ChangeResult`]        |
//! | `POST /v1/node/undrain`                      |               | 200 [`ChangeResult`]        |
//! | `POST /v1/diff`                              | [`DiffRequest`]| 200 [`ChangePreview`] (changes nothing) |
//!
//! Every error answers `{"error": "..."}` ([`ApiErrorBody`]): the owner's [`ApiError`] with its
//! status (invalid 400, not found 404, conflict 409, internal 500), 400 for a malformed body, 404 for an unknown route, 405 for a wrong method, 413 for
//! a body over 64 KiB, 503 when the owner is gone.
use std::{
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, rejection::PathRejection, DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::oneshot,
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::model::{
    AddBackend, ApiError, ApiErrorBody, BackendRef, Envelope, Reply, Request, RequestTx,
    ScaleRequest, SetWeight,
};
#[cfg(doc)]
use crate::model::{BackendStatus, ChangePreview, ChangeResult, DiffRequest, Status};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long [`ApiServer::shutdown`] waits for open connections before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the API could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ApiServeError {
    #[error("another xlb is running (API socket {} is in use)", path.display())]
    InUse { path: PathBuf },
    #[error("API socket path {} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("API socket {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ApiServeError + 'a {
    move |source| ApiServeError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The running API. Dropping it stops accepting connections and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    /// (device, inode) of the socket file we bound, so that we never remove someone else's.
    identity: Option<(u64, u64)>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// The socket path it serves on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting, let requests in flight finish (for a few seconds at most), and remove
    /// the socket file.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        // Drop removes the socket file.
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let ours = match (std::fs::symlink_metadata(&self.path), self.identity) {
            (Ok(m), Some(id)) => (m.dev(), m.ino()) == id,
            _ => false,
        };
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                warn!(path = %self.path.display(), error = %e, "removing the API socket");
            }
        }
    }
}

/// Serve the API on `socket`, handing requests to the state owner through `tx`.
///
/// Creates the parent directory (mode 0700) if missing; replaces a stale socket file that
/// nothing answers on, and fails if something does; the socket is mode 0600 before the first
/// connection can be accepted.
pub async fn serve(socket: &Path, tx: impl Into<RequestTx>) -> Result<ApiServer, ApiServeError> {
    serve_with(socket, tx, None).await
}

/// `daemon.api_group`: the group whose members may read the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiGroup {
    pub name: String,
    pub gid: u32,
}

impl ApiGroup {
    /// Look the group up by name.
    pub fn lookup(name: &str) -> Result<ApiGroup, String> {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(ApiGroup {
                name: name.to_string(),
                gid: g.gid.as_raw(),
            }),
            Ok(None) => Err(format!(
                "daemon.api_group: there is no group named {name:?}"
            )),
            Err(e) => Err(format!("daemon.api_group: looking up group {name:?}: {e}")),
        }
    }
}

/// [`serve`], and with `group` the socket (and a directory it creates) belongs to that group
/// with mode 0660 (0750): its members may read; every connection's peer credentials
/// (`SO_PEERCRED`) are checked, and only uid 0 may change anything.
pub async fn serve_with(
    socket: &Path,
    tx: impl Into<RequestTx>,
    group: Option<ApiGroup>,
) -> Result<ApiServer, ApiServeError> {
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(if group.is_some() { 0o750 } else { 0o700 })
                .create(parent)
                .map_err(io_err(socket, "creating its directory"))?;
            if let Some(g) = &group {
                give_to_group(parent, g, 0o750)
                    .map_err(io_err(socket, "giving its directory to daemon.api_group"))?;
            }
        } else if let Some(g) = &group {
            warn_unreachable(parent, g);
        }
    }
    remove_stale(socket).await?;
    let listener = bind_private(socket)?;
    // Belt and braces: the socket was created 0600 already (see bind_private).
    if let Err(e) = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(socket);
        return Err(io_err(socket, "setting its mode to 0600")(e));
    }
    if let Some(g) = &group {
        if let Err(e) = give_to_group(socket, g, 0o660) {
            let _ = std::fs::remove_file(socket);
            return Err(io_err(socket, "giving it to daemon.api_group (this needs CAP_CHOWN, or a directory of that group with the setgid bit: install -d -g GROUP -m 2750 DIR)")(e));
        }
        info!(group = %g.name, gid = g.gid, "the API socket is readable by the group; changes stay root's");
    }
    let identity = std::fs::symlink_metadata(socket)
        .map(|m| (m.dev(), m.ino()))
        .ok();

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let app = router(tx)
        .layer(axum::middleware::from_fn(only_root_changes))
        .into_make_service_with_connect_info::<PeerCred>();
    let path = socket.to_path_buf();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = shutdown_rx.await;
            })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "the API server stopped");
        }
    });
    info!(socket = %path.display(), "API listening");
    Ok(ApiServer {
        path,
        identity,
        shutdown: Some(shutdown_tx),
        task: Some(task),
    })
}

/// Give `path` to group `g` with `mode`: chown (which needs CAP_CHOWN unless the group is
/// ours), unless it belongs to the group already (a setgid directory of that group).
fn give_to_group(path: &Path, g: &ApiGroup, mode: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.gid() != g.gid {
        std::os::unix::fs::lchown(path, None, Some(g.gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Warn when the members of `g` cannot reach into `dir` (an existing directory).
fn warn_unreachable(dir: &Path, g: &ApiGroup) {
    if let Ok(m) = std::fs::metadata(dir) {
        let mode = m.mode();
        let group_x = m.gid() == g.gid && mode & 0o010 != 0;
        if !group_x && mode & 0o001 == 0 {
            warn!(
                dir = %dir.display(),
                group = %g.name,
                "members of daemon.api_group cannot reach the API socket: its directory is mode \
                 {:o} and not of that group",
                mode & 0o7777
            );
        }
    }
}

/// The credentials of a connection's peer (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>>
    for PeerCred
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        let cred = stream.io().peer_cred().ok();
        PeerCred {
            uid: cred.map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        }
    }
}

/// Whether a request only reads (any uid in `api_group` may): every GET, and the diff.
pub fn is_read(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::GET || method == axum::http::Method::HEAD || path == "/v1/diff"
}

/// Refuse changes from any peer but uid 0 (with 403 and a message that says so).
async fn only_root_changes(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<PeerCred>>()
        .map(|c| c.0);
    let allowed = match peer {
        // In-process use of the router (tests): no peer to check.
        None => true,
        Some(p) => p.uid == Some(0) || is_read(req.method(), req.uri().path()),
    };
    if allowed {
        return next.run(req).await;
    }
    let uid = peer
        .and_then(|p| p.uid)
        .map_or("unknown".to_string(), |u| u.to_string());
    warn!(uid = %uid, method = %req.method(), path = %req.uri().path(), "a change from a non-root peer was refused");
    fail(
        StatusCode::FORBIDDEN,
        format!(
            "permission denied: changes need root (uid 0); uid {uid} may only read (status, \
             backends, events, diff) through daemon.api_group"
        ),
    )
    .into_response()
}

/// If `socket` exists: fail if something listens on it, remove it if nothing does.
async fn remove_stale(socket: &Path) -> Result<(), ApiServeError> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(socket, "inspecting it")(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiServeError::NotASocket {
            path: socket.to_path_buf(),
        });
    }
    match UnixStream::connect(socket).await {
        Ok(_) => Err(ApiServeError::InUse {
            path: socket.to_path_buf(),
        }),
        // A full accept backlog: someone is listening.
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Err(ApiServeError::InUse {
            path: socket.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = %socket.display(), "removing a stale API socket");
            match std::fs::remove_file(socket) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(io_err(socket, "removing the stale socket")(e))
                }
                _ => Ok(()),
            }
        }
        Err(e) => Err(io_err(socket, "probing it")(e)),
    }
}

/// Bind a listening socket whose file is created with mode 0600: on Linux the file takes the
/// mode of the socket inode (less the umask), which `fchmod` sets before `bind`.
fn bind_private(socket: &Path) -> Result<UnixListener, ApiServeError> {
    use nix::sys::socket::{self as s, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;

    let errno = |what: &'static str| move |e: nix::errno::Errno| io_err(socket, what)(e.into());
    let fd = s::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(errno("creating a socket"))?;
    nix::sys::stat::fchmod(
        fd.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .map_err(errno("setting the socket's mode"))?;
    let addr = UnixAddr::new(socket).map_err(errno("making its address"))?;
    s::bind(fd.as_raw_fd(), &addr).map_err(|e| match e {
        nix::errno::Errno::EADDRINUSE => ApiServeError::InUse {
            path: socket.to_path_buf(),
        },
        e => io_err(socket, "binding")(e.into()),
    })?;
    s::listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN)).map_err(errno("listening"))?;
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    UnixListener::from_std(std_listener).map_err(io_err(socket, "registering the listener"))
}

/// The routes, on top of the channel to the state owner.
pub fn router(tx: impl Into<RequestTx>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route(
            "/v1/groups/{group}/backends",
            get(list_backends).post(add_backend),
        )
        .route("/v1/groups/{group}/backends/remove", post(remove_backend))
        .route("/v1/groups/{group}/backends/drain", post(drain_backend))
        .route("/v1/groups/{group}/backends/weight", post(set_weight))
        .route("/v1/reload", post(reload))
        .route("/v1/groups/{group}/scale", post(scale))
        .route("/v1/events", get(events))
        .route("/v1/flows", get(flows))
        .route("/v1/lookup", get(lookup))
        .route("/v1/node/drain", post(node_drain))
        .route("/v1/node/undrain", post(node_undrain))
        .route("/v1/diff", post(diff))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(tx.into())
}

type Tx = State<RequestTx>;
type GroupPath = Result<axum::extract::Path<String>, PathRejection>;
type Body = Result<Bytes, BytesRejection>;

/// An error answer: `{"error": ...}` with a status.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(ApiErrorBody { error: self.1 })).into_response()
    }
}

fn fail(status: StatusCode, message: impl Into<String>) -> Fail {
    Fail(status, message.into())
}

/// The HTTP status of the owner's answer `e`: the one place errors meet HTTP.
fn http_status(e: &ApiError) -> StatusCode {
    match e {
        ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        fail(http_status(&e), e.to_string())
    }
}

type Answer = Result<Response, Fail>;

fn ok<T: Serialize>(status: StatusCode, body: T) -> Answer {
    Ok((status, Json(body)).into_response())
}

fn shutting_down() -> Fail {
    fail(StatusCode::SERVICE_UNAVAILABLE, "xlb is shutting down")
}

/// Hand `request` to the state owner and wait for its answer.
async fn ask(tx: &RequestTx, request: Request) -> Result<Reply, Fail> {
    let (reply, answer) = oneshot::channel();
    if tx.send(Envelope { request, reply }).await.is_err() {
        return Err(shutting_down());
    }
    match answer.await {
        Err(_) => Err(shutting_down()),
        Ok(result) => Ok(result?),
    }
}

fn group(path: GroupPath) -> Result<String, Fail> {
    path.map(|p| p.0)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e.body_text()))
}

/// The body's bytes, or the 413/400 answer for a body axum could not read.
fn body_bytes(body: Body) -> Result<Bytes, Fail> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {} KiB", MAX_BODY_BYTES / 1024),
            )
        } else {
            fail(e.status(), e.body_text())
        }
    })
}

fn json_body<T: DeserializeOwned>(bytes: &[u8], example: &str) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("missing JSON body: expected {example}"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| format!("invalid JSON body ({e}): expected {example}"))
}

/// The POST routes that take a JSON body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyRoute {
    /// `POST /v1/groups/{group}/backends`
    AddBackend,
    /// `POST /v1/groups/{group}/backends/remove`
    RemoveBackend,
    /// `POST /v1/groups/{group}/backends/drain`
    DrainBackend,
    /// `POST /v1/groups/{group}/backends/weight`
    SetWeight,
    /// `POST /v1/groups/{group}/scale`
    Scale,
}

/// What a POST route makes of its body before it asks the state owner: the [`Request`], or the
/// message of its 400 answer. The handlers use it; so does the fuzz target
/// (`fuzz/fuzz_targets/api_body.rs`).
pub fn body_request(route: BodyRoute, group: String, body: &[u8]) -> Result<Request, String> {
    Ok(match route {
        BodyRoute::AddBackend => Request::AddBackend {
            group,
            body: json_body::<AddBackend>(body, WEIGHT_EXAMPLE)?,
        },
        BodyRoute::RemoveBackend => Request::RemoveBackend {
            group,
            body: json_body::<BackendRef>(body, ADDRESS_EXAMPLE)?,
        },
        BodyRoute::DrainBackend => Request::DrainBackend {
            group,
            body: json_body::<BackendRef>(body, ADDRESS_EXAMPLE)?,
        },
        BodyRoute::SetWeight => Request::SetWeight {
            group,
            body: json_body::<SetWeight>(body, WEIGHT_EXAMPLE)?,
        },
        BodyRoute::Scale => Request::Scale {
            group,
            body: json_body::<ScaleRequest>(body, SCALE_EXAMPLE)?,
        },
    })
}

/// The request of a POST route with a JSON body, or its error answer.
fn route_request(route: BodyRoute, path: GroupPath, body: Body) -> Result<Request, Fail> {
    let group = group(path)?;
    let bytes = body_bytes(body)?;
    body_request(route, group, &bytes).map_err(|m| fail(StatusCode::BAD_REQUEST, m))
}

fn unexpected(reply: &Reply) -> Fail {
    warn!(
        ?reply,
        "the state owner answered with the wrong kind of reply"
    );
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error: unexpected reply from the state owner",
    )
}

/// Run a change and answer its `ChangeResult` with `code`.
async fn change(tx: &RequestTx, request: Request, code: StatusCode) -> Answer {
    match ask(tx, request).await? {
        Reply::Done(result) => ok(code, result),
        other => Err(unexpected(&other)),
    }
}

async fn status(State(tx): Tx) -> Answer {
    match ask(&tx, Request::Status).await? {
        Reply::Status(status) => ok(StatusCode::OK, status),
        other => Err(unexpected(&other)),
    }
}

async fn list_backends(State(tx): Tx, path: GroupPath) -> Answer {
    let name = group(path)?;
    match ask(&tx, Request::Status).await? {
        Reply::Status(status) => match status.groups.into_iter().find(|g| g.name == name) {
            Some(g) => ok(StatusCode::OK, g.backends),
            None => Err(fail(
                StatusCode::NOT_FOUND,
                format!("no target group named {name:?}"),
            )),
        },
        other => Err(unexpected(&other)),
    }
}

const ADDRESS_EXAMPLE: &str = r#"{"address": "ADDR[:PORT]"}"#;
const WEIGHT_EXAMPLE: &str = r#"{"address": "ADDR[:PORT]", "weight": N}"#;
const SCALE_EXAMPLE: &str = r#"{"desired": N}"#;

async fn add_backend(State(tx): Tx, path: GroupPath, body: Body) -> Answer {
    let request = route_request(BodyRoute::AddBackend, path, body)?;
    change(&tx, request, StatusCode::CREATED).await
}

async fn remove_backend(State(tx): Tx, path: GroupPath, body: Body) -> Answer {
    let request = route_request(BodyRoute::RemoveBackend, path, body)?;
    change(&tx, request, StatusCode::OK).await
}

async fn drain_backend(State(tx): Tx, path: GroupPath, body: Body) -> Answer {
    let request = route_request(BodyRoute::DrainBackend, path, body)?;
    change(&tx, request, StatusCode::OK).await
}

async fn set_weight(State(tx): Tx, path: GroupPath, body: Body) -> Answer {
    let request = route_request(BodyRoute::SetWeight, path, body)?;
    change(&tx, request, StatusCode::OK).await
}

async fn reload(State(tx): Tx) -> Answer {
    change(&tx, Request::Reload, StatusCode::OK).await
}

async fn node_drain(State(tx): Tx) -> Answer {
    change(&tx, Request::NodeDrain, StatusCode::OK).await
}

async fn node_undrain(State(tx): Tx) -> Answer {
    change(&tx, Request::NodeUndrain, StatusCode::OK).await
}

async fn scale(State(tx): Tx, path: GroupPath, body: Body) -> Answer {
    let request = route_request(BodyRoute::Scale, path, body)?;
    change(&tx, request, StatusCode::OK).await
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    group: Option<String>,
}

async fn events(
    State(tx): Tx,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let group = query.ok().and_then(|q| q.0.group);
    match ask(&tx, Request::Events { group }).await? {
        Reply::Events(list) => ok(StatusCode::OK, list),
        other => Err(unexpected(&other)),
    }
}

// ---- flows and lookup: the owner answers names and ids, the maps are read here ----

/// Map reads of `flows` / `lookup` running at once at most (each may read a large table).
static FLOW_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Run `read` with the owner's flow context on a blocking thread.
async fn with_flow_context<T: Serialize + Send + 'static>(
    tx: &RequestTx,
    read: impl FnOnce(&crate::flows::FlowContext) -> Result<T, crate::flows::FlowsError>
        + Send
        + 'static,
) -> Answer {
    let ctx = match ask(tx, Request::FlowContext).await? {
        Reply::FlowContext(ctx) => ctx,
        other => return Err(unexpected(&other)),
    };
    // The permit goes with the read: a client that hangs up does not free it early.
    let permit = FLOW_READS.acquire().await.map_err(|_| shutting_down())?;
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        read(&ctx)
    })
    .await
    .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match result {
        Ok(v) => ok(StatusCode::OK, v),
        Err(e @ crate::flows::FlowsError::Invalid(_)) => {
            Err(fail(StatusCode::BAD_REQUEST, e.to_string()))
        }
        Err(e) => Err(fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn flows(
    State(tx): Tx,
    query: Result<
        axum::extract::Query<crate::flows::FlowsQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Answer {
    let q = query
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e.body_text()))?
        .0;
    with_flow_context(&tx, move |ctx| crate::flows::list(ctx, &q)).await
}

async fn lookup(
    State(tx): Tx,
    query: Result<
        axum::extract::Query<crate::flows::LookupQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Answer {
    let q = query
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e.body_text()))?
        .0;
    with_flow_context(&tx, move |ctx| {
        q.parse()?;
        let maps = crate::flows::PinnedMaps::open(ctx)?;
        crate::flows::lookup(ctx, &maps, &q, crate::sweep::monotonic_coarse_ns())
    })
    .await
}

/// `POST /v1/diff`: an empty body (or `{}`) compares the daemon's own config file.
async fn diff(State(tx): Tx, body: Body) -> Answer {
    let bytes = body_bytes(body)?;
    let req: crate::model::DiffRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        json_body(
            &bytes,
            r#"{"config": "TOML TEXT", "file": "NAME"} or nothing"#,
        )
        .map_err(|m| fail(StatusCode::BAD_REQUEST, m))?
    };
    match ask(&tx, Request::Diff(req)).await? {
        Reply::Diff(p) => ok(StatusCode::OK, p),
        other => Err(unexpected(&other)),
    }
}

async fn not_found(uri: axum::http::Uri) -> Fail {
    fail(
        StatusCode::NOT_FOUND,
        format!("no such API route: {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Fail {
    fail(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A canned state owner for tests of the API and the CLI.
#[cfg(test)]
pub(crate) mod testing {
    use std::{collections::BTreeMap, net::IpAddr};

    use tokio::sync::mpsc;

    use crate::model::*;

    fn backend(group: &str, address: &str, port: u16, state: BackendState) -> BackendStatus {
        BackendStatus {
            group: group.into(),
            address: address.parse::<IpAddr>().unwrap(),
            port,
            weight: 100,
            state,
            reason: match state {
                BackendState::Unhealthy => "connect refused".into(),
                BackendState::Draining => "drained by API".into(),
                _ => "HTTP 200".into(),
            },
            since_secs: match state {
                BackendState::Healthy => 12.4,
                BackendState::Unhealthy => 200.0,
                _ => 7300.0,
            },
            receiving_new_flows: state == BackendState::Healthy,
            active_flows: 3,
            source: BackendSource::Config,
            drain_remaining_secs: (state == BackendState::Draining).then_some(40.0),
            counters: TrafficCounters {
                packets: 1000,
                bytes: 150_000,
                new_flows: 20,
                ..Default::default()
            },
        }
    }

    /// Two groups: `web` (IPv4, HTTP-checked) and `api6` (IPv6, unchecked, fail-open).
    pub fn canned_status() -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 4242,
            uptime_secs: 3725.0,
            config_file: "/etc/xlb/xlb.toml".into(),
            interfaces: vec![
                InterfaceStatus {
                    name: "eth0".into(),
                    mode: "native".into(),
                },
                InterfaceStatus {
                    name: "eth1".into(),
                    mode: "generic".into(),
                },
            ],
            services: vec![
                ServiceStatus {
                    name: "web".into(),
                    vip: "192.0.2.10".parse().unwrap(),
                    port: 80,
                    protocol: "tcp".into(),
                    target_group: "web".into(),
                    backends_in_table: 1,
                    counters: TrafficCounters {
                        packets: 123_456,
                        bytes: 98_765_432,
                        new_flows: 789,
                        dropped: 5,
                        ..Default::default()
                    },
                    forwarding: None,
                    table_fingerprint: "0123456789abcdef".into(),
                },
                ServiceStatus {
                    name: "api-v6".into(),
                    vip: "2001:db8::100".parse().unwrap(),
                    port: 443,
                    protocol: "tcp".into(),
                    target_group: "api6".into(),
                    backends_in_table: 2,
                    counters: TrafficCounters::default(),
                    forwarding: None,
                    table_fingerprint: "fedcba9876543210".into(),
                },
            ],
            groups: vec![
                GroupStatus {
                    name: "web".into(),
                    port: Some(8080),
                    all_unhealthy: "drop".into(),
                    deregistration_delay_secs: 300.0,
                    health_check: Some("http GET /health :8080 every 30s".into()),
                    failing_open: false,
                    scaling: None,
                    backends: vec![
                        backend("web", "10.0.0.1", 8080, BackendState::Healthy),
                        backend("web", "10.0.0.2", 8080, BackendState::Draining),
                    ],
                },
                GroupStatus {
                    name: "api6".into(),
                    port: Some(9000),
                    all_unhealthy: "fail_open".into(),
                    deregistration_delay_secs: 15.0,
                    health_check: None,
                    failing_open: true,
                    scaling: None,
                    backends: vec![
                        backend("api6", "2001:db8::1", 9000, BackendState::Unhealthy),
                        backend("api6", "2001:db8::2", 9000, BackendState::Unhealthy),
                    ],
                },
            ],
            global: BTreeMap::from([
                ("passed".to_string(), 5000),
                ("dropped".to_string(), 0),
                ("malformed".to_string(), 3),
            ]),
            announce: None,
            maps_writing: false,
        }
    }

    /// Answer requests like a small owner would: unknown groups are NotFound, 10.0.0.1:8080
    /// is already in `web`, reload fails validation.
    pub fn spawn_owner() -> mpsc::Sender<Envelope> {
        let (tx, mut rx) = mpsc::channel::<Envelope>(8);
        tokio::spawn(async move {
            while let Some(env) = rx.recv().await {
                let answer = answer(env.request);
                let _ = env.reply.send(answer);
            }
        });
        tx
    }

    fn answer(request: Request) -> Result<Reply, ApiError> {
        let status = canned_status();
        let known = |g: &str| -> Result<(), ApiError> {
            if status.groups.iter().any(|x| x.name == g) {
                Ok(())
            } else {
                Err(ApiError::NotFound(format!("no target group named {g:?}")))
            }
        };
        let done = |m: String| Ok(Reply::Done(ChangeResult { message: m }));
        match request {
            Request::Status => Ok(Reply::Status(Box::new(status.clone()))),
            Request::FlowContext => Ok(Reply::FlowContext(Box::new(crate::flows::FlowContext {
                pin_dir: None,
                ring_size: 1021,
                hash_seed: 7,
                idle: crate::flows::idle_config(
                    std::time::Duration::from_secs(350),
                    std::time::Duration::from_secs(120),
                ),
                services: vec![crate::flows::FlowService {
                    id: 0,
                    name: "web".into(),
                    vip: "198.18.100.1".parse().unwrap(),
                    port: 80,
                    protocol: lb_common::PROTO_TCP,
                }],
                backends: Default::default(),
            }))),
            Request::AddBackend { group, body } => {
                known(&group)?;
                if body.address == "10.0.0.1:8080" {
                    return Err(ApiError::Conflict(format!(
                        "{} is already in {group}",
                        body.address
                    )));
                }
                done(format!(
                    "added {} to {group} with weight {}",
                    body.address,
                    body.weight.unwrap_or(100)
                ))
            }
            Request::RemoveBackend { group, body } => {
                known(&group)?;
                done(format!("removed {} from {group}", body.address))
            }
            Request::DrainBackend { group, body } => {
                known(&group)?;
                done(format!("draining {} in {group}", body.address))
            }
            Request::SetWeight { group, body } => {
                known(&group)?;
                done(format!(
                    "weight of {} in {group} is now {}",
                    body.address, body.weight
                ))
            }
            Request::Reload => Err(ApiError::Invalid(
                "xlb.toml:3:1: daemon.foo: unknown key".into(),
            )),
            Request::NodeDrain => done("draining: withdrawing 1 VIPs".into()),
            Request::NodeUndrain => Err(ApiError::Invalid(
                "the config has no [daemon.announce]".into(),
            )),
            Request::Scale { group, body } => {
                known(&group)?;
                if body.desired > 10 {
                    return Err(ApiError::Invalid("desired 11 is above max 10".into()));
                }
                done(format!("{group}: desired {}", body.desired))
            }
            Request::Diff(d) => {
                if d.config.as_deref().is_some_and(|c| c.contains("bad")) {
                    return Err(ApiError::Invalid(format!(
                        "{}:1:1: toml: bad",
                        d.file.unwrap_or_default()
                    )));
                }
                Ok(Reply::Diff(Box::new(ChangePreview {
                    config_file: d.file.unwrap_or_else(|| "/etc/xlb/xlb.toml".into()),
                    notes: vec![],
                    services: vec![ServiceDiff {
                        name: "web".into(),
                        change: "changed".into(),
                        details: vec![],
                        backends_before: 3,
                        backends_after: 4,
                        table_size: 65537,
                        moved_entries: Some(16384),
                        moved_share: Some(16384.0 / 65537.0),
                        open_flows: 120,
                        flows_on_leaving: 0,
                    }],
                    backends: vec![BackendDiff {
                        group: "web".into(),
                        backend: "10.0.0.4".into(),
                        change: "added".into(),
                        weight_before: None,
                        weight_after: Some(1),
                        open_flows: 0,
                    }],
                    alerts: vec![],
                })))
            }
            Request::Events { group } => Ok(Reply::Events(vec![crate::model::Event {
                time: 1.5e9,
                group: group.unwrap_or_else(|| "web".into()),
                kind: "scale_out".into(),
                message: "target tracking → 4".into(),
                metrics: [("new_flows_per_second_per_backend".to_string(), 180.0)].into(),
            }])),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use tokio::sync::mpsc;

    use hyper::Method;
    use serde_json::{json, Value};

    use super::{testing::*, *};
    use crate::{cli::request, model::*};

    struct Fixture {
        _dir: tempfile::TempDir,
        sock: PathBuf,
        server: ApiServer,
    }

    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/xlb/xlb.sock");
        let server = serve(&sock, spawn_owner()).await.unwrap();
        Fixture {
            _dir: dir,
            sock,
            server,
        }
    }

    async fn call(f: &Fixture, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        request(&f.sock, method, path, body).await.unwrap()
    }

    fn error_of(v: &Value) -> &str {
        v.get("error").and_then(Value::as_str).unwrap_or_else(|| {
            panic!("no error in {v}");
        })
    }

    #[tokio::test]
    async fn status_route() {
        let f = start().await;
        let (code, body) = call(&f, Method::GET, "/v1/status", None).await;
        assert_eq!(code, 200);
        let status: Status = serde_json::from_value(body).unwrap();
        assert_eq!(status, canned_status());
    }

    #[tokio::test]
    async fn list_backends_route() {
        let f = start().await;
        let (code, body) = call(&f, Method::GET, "/v1/groups/api6/backends", None).await;
        assert_eq!(code, 200);
        let backends: Vec<BackendStatus> = serde_json::from_value(body).unwrap();
        assert_eq!(backends, canned_status().groups[1].backends);

        let (code, body) = call(&f, Method::GET, "/v1/groups/nope/backends", None).await;
        assert_eq!(code, 404);
        assert!(error_of(&body).contains("\"nope\""), "{body}");
    }

    #[tokio::test]
    async fn add_backend_route() {
        let f = start().await;
        let path = "/v1/groups/web/backends";
        let (code, body) = call(
            &f,
            Method::POST,
            path,
            Some(json!({"address": "10.0.0.9:8080", "weight": 7})),
        )
        .await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(
            body,
            json!({"message": "added 10.0.0.9:8080 to web with weight 7"})
        );

        // weight is optional
        let (code, body) = call(&f, Method::POST, path, Some(json!({"address": "10.0.0.9"}))).await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["message"], "added 10.0.0.9 to web with weight 100");

        let (code, body) = call(
            &f,
            Method::POST,
            path,
            Some(json!({"address": "10.0.0.1:8080"})),
        )
        .await;
        assert_eq!(code, 409);
        assert_eq!(error_of(&body), "10.0.0.1:8080 is already in web");

        let (code, body) = call(
            &f,
            Method::POST,
            "/v1/groups/nope/backends",
            Some(json!({"address": "10.0.0.9"})),
        )
        .await;
        assert_eq!(code, 404);
        assert_eq!(error_of(&body), "no target group named \"nope\"");
    }

    #[tokio::test]
    async fn remove_drain_weight_routes() {
        let f = start().await;
        let addr = json!({"address": "[2001:db8::1]:9000"});
        let (code, body) = call(
            &f,
            Method::POST,
            "/v1/groups/api6/backends/remove",
            Some(addr.clone()),
        )
        .await;
        assert_eq!(
            (code, body),
            (
                200,
                json!({"message": "removed [2001:db8::1]:9000 from api6"})
            )
        );

        let (code, body) = call(
            &f,
            Method::POST,
            "/v1/groups/api6/backends/drain",
            Some(addr.clone()),
        )
        .await;
        assert_eq!(
            (code, body),
            (
                200,
                json!({"message": "draining [2001:db8::1]:9000 in api6"})
            )
        );

        let (code, body) = call(
            &f,
            Method::POST,
            "/v1/groups/web/backends/weight",
            Some(json!({"address": "10.0.0.2:8080", "weight": 0})),
        )
        .await;
        assert_eq!(
            (code, body),
            (
                200,
                json!({"message": "weight of 10.0.0.2:8080 in web is now 0"})
            )
        );

        for route in ["remove", "drain"] {
            let (code, body) = call(
                &f,
                Method::POST,
                &format!("/v1/groups/nope/backends/{route}"),
                Some(addr.clone()),
            )
            .await;
            assert_eq!(code, 404, "{route}: {body}");
            error_of(&body);
        }
        // weight without a weight
        let (code, body) = call(
            &f,
            Method::POST,
            "/v1/groups/web/backends/weight",
            Some(addr),
        )
        .await;
        assert_eq!(code, 400);
        assert!(error_of(&body).contains("missing field `weight`"), "{body}");
    }

    #[tokio::test]
    async fn reload_route_reports_invalid_config() {
        let f = start().await;
        let (code, body) = call(&f, Method::POST, "/v1/reload", None).await;
        assert_eq!(code, 400);
        assert_eq!(
            body,
            json!({"error": "xlb.toml:3:1: daemon.foo: unknown key"})
        );
    }

    #[tokio::test]
    async fn scale_and_events_routes() {
        let f = start().await;
        let (code, body) = call(
            &f,
            Method::POST,
            "/v1/groups/web/scale",
            Some(json!({"desired": 4})),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["message"], "web: desired 4");
        let (code, body) = call(
            &f,
            Method::POST,
            "/v1/groups/web/scale",
            Some(json!({"desired": 11})),
        )
        .await;
        assert_eq!(code, 400, "{body}");
        let (code, body) = call(
            &f,
            Method::POST,
            "/v1/groups/nope/scale",
            Some(json!({"desired": 1})),
        )
        .await;
        assert_eq!(code, 404, "{body}");
        let (code, body) = call(&f, Method::POST, "/v1/groups/web/scale", Some(json!({}))).await;
        assert_eq!(code, 400, "{body}");
        let (code, body) = call(&f, Method::GET, "/v1/events?group=db", None).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body[0]["group"], "db");
        assert_eq!(
            body[0]["metrics"]["new_flows_per_second_per_backend"],
            180.0
        );
        let (code, body) = call(&f, Method::GET, "/v1/events", None).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body[0]["group"], "web");
    }

    #[tokio::test]
    async fn diff_route_changes_nothing_and_reports_errors() {
        let f = start().await;
        let (code, v) = call(&f, Method::POST, "/v1/diff", None).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["config_file"], "/etc/xlb/xlb.toml");
        assert_eq!(v["services"][0]["moved_entries"], 16384);
        let body = json!({"config": "[daemon]\n", "file": "new.toml"});
        let (code, v) = call(&f, Method::POST, "/v1/diff", Some(body)).await;
        assert_eq!((code, v["config_file"].as_str()), (200, Some("new.toml")));
        let body = json!({"config": "bad", "file": "new.toml"});
        let (code, v) = call(&f, Method::POST, "/v1/diff", Some(body)).await;
        assert_eq!((code, error_of(&v)), (400, "new.toml:1:1: toml: bad"));
        let (code, _) = call(&f, Method::POST, "/v1/diff", Some(json!({"config": 3}))).await;
        assert_eq!(code, 400);
        assert!(is_read(&Method::POST, "/v1/diff"));
        assert!(is_read(&Method::GET, "/v1/status"));
        assert!(!is_read(&Method::POST, "/v1/reload"));
        assert!(!is_read(&Method::POST, "/v1/groups/web/backends"));
    }

    #[tokio::test]
    async fn api_group_owns_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/xlb/xlb.sock");
        // A group this (root) process may give files to: its own.
        let gid = nix::unistd::getegid().as_raw();
        let group = ApiGroup {
            name: "test".into(),
            gid,
        };
        let _server = serve_with(&sock, spawn_owner(), Some(group)).await.unwrap();
        let m = std::fs::metadata(&sock).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o660);
        assert_eq!(m.gid(), gid);
        let d = std::fs::metadata(sock.parent().unwrap()).unwrap();
        assert_eq!(d.permissions().mode() & 0o777, 0o750);
        // Root changes things as before.
        let (code, _) = request(&sock, Method::POST, "/v1/reload", None)
            .await
            .unwrap();
        assert_eq!(code, 400, "the canned owner's invalid config, not 403");
        assert!(ApiGroup::lookup("no-such-group-xlb").is_err());
    }

    #[tokio::test]
    async fn malformed_bodies_are_400_json() {
        let f = start().await;
        for (body, needle) in [
            (&b"{not json"[..], "invalid JSON body"),
            (&b""[..], "missing JSON body"),
            (&b"{\"address\": 5}"[..], "invalid type"),
            (&b"[1,2]"[..], "invalid JSON body"),
        ] {
            let (code, v) = crate::cli::request_bytes(
                &f.sock,
                Method::POST,
                "/v1/groups/web/backends",
                Some(Bytes::copy_from_slice(body)),
            )
            .await
            .unwrap();
            assert_eq!(code, 400, "{v}");
            assert!(error_of(&v).contains(needle), "{v}");
        }
    }

    #[tokio::test]
    async fn oversized_body_is_413_json() {
        let f = start().await;
        let big = format!(r#"{{"address": "{}"}}"#, "1".repeat(MAX_BODY_BYTES + 1));
        let (code, v) = crate::cli::request_bytes(
            &f.sock,
            Method::POST,
            "/v1/groups/web/backends/drain",
            Some(Bytes::from(big)),
        )
        .await
        .unwrap();
        assert_eq!(code, 413, "{v}");
        assert!(error_of(&v).contains("64 KiB"), "{v}");
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_json() {
        let f = start().await;
        let (code, body) = call(&f, Method::GET, "/v2/whatever", None).await;
        assert_eq!(code, 404);
        assert_eq!(error_of(&body), "no such API route: /v2/whatever");

        let (code, body) = call(&f, Method::GET, "/v1/groups/web/backends/extra", None).await;
        assert_eq!(code, 404);
        error_of(&body);

        let (code, body) = call(&f, Method::DELETE, "/v1/status", None).await;
        assert_eq!(code, 405);
        assert_eq!(error_of(&body), "DELETE is not allowed on /v1/status");

        let (code, body) = call(&f, Method::GET, "/v1/reload", None).await;
        assert_eq!(code, 405);
        error_of(&body);
    }

    /// The flows routes check their queries (400) before reading any map; the canned owner
    /// has no pinned maps, so a valid query answers 500 saying so.
    #[tokio::test]
    async fn flows_and_lookup_routes_check_their_queries() {
        let f = start().await;
        for (path, code, want) in [
            ("/v1/flows?limit=0", 400, "out of range"),
            ("/v1/flows?limit=100001", 400, "out of range"),
            ("/v1/flows?limit=x", 400, "limit"),
            ("/v1/flows?service=nope", 400, "no service named"),
            ("/v1/flows?backend=bad", 400, "not an IP address"),
            ("/v1/flows?service=web&limit=5", 500, "not pinned"),
            (
                "/v1/lookup?protocol=sctp&client=198.18.1.2:1&vip=198.18.100.1:80",
                400,
                "protocol",
            ),
            (
                "/v1/lookup?protocol=tcp&client=198.18.1.2&vip=198.18.100.1:80",
                400,
                "ADDR:PORT",
            ),
            ("/v1/lookup?protocol=tcp", 400, "client"),
            (
                "/v1/lookup?protocol=tcp&client=198.18.1.2:1&vip=198.18.100.1:80",
                500,
                "not pinned",
            ),
        ] {
            let (c, body) = call(&f, Method::GET, path, None).await;
            assert_eq!(c, code, "{path}: {body}");
            assert!(error_of(&body).contains(want), "{path}: {body}");
        }
    }

    #[tokio::test]
    async fn group_names_are_percent_decoded() {
        let f = start().await;
        let (code, body) = call(&f, Method::GET, "/v1/groups/we%62/backends", None).await;
        assert_eq!(code, 200, "{body}");
    }

    #[tokio::test]
    async fn owner_gone_is_503() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xlb.sock");
        // An owner that has stopped: the receiver is dropped.
        let (tx, rx) = mpsc::channel::<Envelope>(1);
        drop(rx);
        let _server = serve(&sock, tx).await.unwrap();
        let (code, body) = request(&sock, Method::GET, "/v1/status", None)
            .await
            .unwrap();
        assert_eq!(
            (code, body),
            (503, json!({"error": "xlb is shutting down"}))
        );

        // An owner that drops the reply sender without answering.
        let sock2 = dir.path().join("xlb2.sock");
        let (tx, mut rx) = mpsc::channel::<Envelope>(1);
        tokio::spawn(async move {
            while let Some(env) = rx.recv().await {
                drop(env);
            }
        });
        let _server2 = serve(&sock2, tx).await.unwrap();
        let (code, body) = request(&sock2, Method::POST, "/v1/reload", None)
            .await
            .unwrap();
        assert_eq!(
            (code, body),
            (503, json!({"error": "xlb is shutting down"}))
        );
    }

    #[tokio::test]
    async fn wrong_reply_kind_is_500_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xlb.sock");
        let (tx, mut rx) = mpsc::channel::<Envelope>(1);
        tokio::spawn(async move {
            while let Some(env) = rx.recv().await {
                let _ = env.reply.send(Ok(Reply::Done(ChangeResult {
                    message: "?".into(),
                })));
            }
        });
        let _server = serve(&sock, tx).await.unwrap();
        let (code, body) = request(&sock, Method::GET, "/v1/status", None)
            .await
            .unwrap();
        assert_eq!(code, 500);
        error_of(&body);
    }

    #[tokio::test]
    async fn socket_and_directory_are_private() {
        let f = start().await;
        let mode = std::fs::metadata(&f.sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600, "socket mode {mode:o}");
        let dir_mode = std::fs::metadata(f.sock.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o7777, 0o700, "directory mode {dir_mode:o}");
        assert_eq!(f.server.path(), f.sock);
    }

    #[tokio::test]
    async fn second_server_on_the_same_path_fails() {
        let f = start().await;
        let err = serve(&f.sock, spawn_owner()).await.err().unwrap();
        assert!(matches!(err, ApiServeError::InUse { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "another xlb is running (API socket {} is in use)",
                f.sock.display()
            )
        );
        // The first one is untouched.
        assert_eq!(call(&f, Method::GET, "/v1/status", None).await.0, 200);
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xlb.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists(), "a stale socket file is left behind");
        let _server = serve(&sock, spawn_owner()).await.unwrap();
        let (code, _) = request(&sock, Method::GET, "/v1/status", None)
            .await
            .unwrap();
        assert_eq!(code, 200);
    }

    #[tokio::test]
    async fn a_regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xlb.sock");
        std::fs::write(&sock, "precious").unwrap();
        let err = serve(&sock, spawn_owner()).await.err().unwrap();
        assert!(matches!(err, ApiServeError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
    }

    #[tokio::test]
    async fn drop_removes_the_socket() {
        let f = start().await;
        let sock = f.sock.clone();
        drop(f.server);
        assert!(!sock.exists());
        let err = request(&sock, Method::GET, "/v1/status", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is `xlb run` running?"), "{err}");
    }

    #[tokio::test]
    async fn graceful_shutdown_removes_the_socket() {
        let f = start().await;
        let sock = f.sock.clone();
        f.server.shutdown().await;
        assert!(!sock.exists());
    }

    #[tokio::test]
    async fn drop_leaves_a_newer_servers_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xlb.sock");
        let old = serve(&sock, spawn_owner()).await.unwrap();
        // Someone removed our socket and another server took the path.
        std::fs::remove_file(&sock).unwrap();
        let _new = serve(&sock, spawn_owner()).await.unwrap();
        drop(old);
        assert!(sock.exists());
        assert_eq!(
            request(&sock, Method::GET, "/v1/status", None)
                .await
                .unwrap()
                .0,
            200
        );
    }

    #[test]
    fn domain_errors_map_to_http_status_here() {
        use crate::state::ChangeError;
        let cases = [
            (ApiError::from(ChangeError::Invalid("i".into())), 400, "i"),
            (ChangeError::NotFound("n".into()).into(), 404, "n"),
            (ChangeError::Conflict("c".into()).into(), 409, "c"),
            (ApiError::Internal("x".into()), 500, "x"),
        ];
        for (e, code, text) in cases {
            let f = Fail::from(e);
            assert_eq!((f.0.as_u16(), f.1.as_str()), (code, text));
        }
    }
}
