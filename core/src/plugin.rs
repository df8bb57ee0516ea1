//! Handlers loaded from plugin libraries (`kind: plugin`, `plugin.mode:
//! library`) through the C ABI of `crius_shim_api::abi`.
//!
//! Before anything of the library runs (dlopen runs its initializers), the
//! file and its directory must be owned by root and writable by nobody else,
//! as a plugin runs with the daemon's privileges. Then the entry symbol must
//! exist and the vtable's ABI version and size must match. A loaded library
//! is never unloaded: handler tasks and thread-locals may still reference its
//! code.
//!
//! Calls into the plugin block (the plugin drives the handler on its own
//! runtime), so they run on the blocking thread pool.

use std::ffi::c_void;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use crius_shim_api::abi::{
    ABI_VERSION, Buffer, ENTRY_SYMBOL, EntryFn, HandlerVtable, STATUS_ERROR, STATUS_OK, VTABLE_SIZE,
};
use crius_shim_api::prost::Message;
use crius_shim_api::types::{
    AttachRequest, Capabilities, ContainerRef, ContainerStatsResponse, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, Empty, ExecRequest, ExecResponse,
    ExecSyncRequest, ExecSyncResponse, InfoResponse, KillProcessRequest, PortForwardRequest,
    ProcessRef, ResizePtyRequest, RestoreSandboxRequest, RestoreSandboxResponse, RunSandboxRequest,
    RunSandboxResponse, SandboxRef, SandboxStatsResponse, SandboxStatusResponse,
    StopContainerRequest, UpdateContainerResourcesRequest, UpdateSandboxResourcesRequest,
    WaitResponse,
};
use crius_shim_api::wire::{self, method};
use crius_shim_api::{HandlerError, HandlerParams, HandlerResult, RuntimeHandler};
use tracing::info;

/// Why a plugin library could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("refusing to load plugin {path}: {reason}")]
    Insecure { path: PathBuf, reason: String },
    #[error("cannot load plugin {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "plugin {path} does not export the `{ENTRY_SYMBOL}` symbol: it is not a crius handler plugin \
         (build it with crius_shim_api::export_handler!)"
    )]
    MissingSymbol { path: PathBuf },
    #[error(
        "plugin {path} implements handler ABI version {found}, but this crius speaks handler ABI \
         version {expected}: rebuild the plugin against a crius-shim-api with ABI version {expected}"
    )]
    AbiVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error(
        "plugin {path} declares a {found}-byte vtable for handler ABI version {ABI_VERSION}, which \
         needs at least {expected} bytes: the plugin is corrupt or built against an incompatible crius-shim-api"
    )]
    VtableSize {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("plugin {path} failed to create handler {name}: {error}")]
    Create {
        path: PathBuf,
        name: String,
        error: HandlerError,
    },
    #[error("plugin {path} failed to describe handler {name} (Info): {error}")]
    Info {
        path: PathBuf,
        name: String,
        error: HandlerError,
    },
}

/// A plugin's handler instance, callable from any thread: the ABI requires
/// plugins to accept concurrent calls on one instance.
#[derive(Clone, Copy)]
struct Instance {
    vtable: &'static HandlerVtable,
    ptr: *mut c_void,
}

// SAFETY: the plugin ABI requires `call` to be thread-safe for an instance
// (export_handler! instances are a Send + Sync handler plus a tokio runtime),
// and the vtable is a static of a library that is never unloaded.
unsafe impl Send for Instance {}
// SAFETY: as above; `Instance` itself is an immutable pair of pointers.
unsafe impl Sync for Instance {}

impl Instance {
    /// One blocking call. Copies the answer out and frees the plugin's buffer.
    fn call(self, name: &str, request: &[u8]) -> HandlerResult<Vec<u8>> {
        let mut out = Buffer::empty();
        // SAFETY: `ptr` came from this vtable's `create`; the method and
        // request slices outlive the call; `out` is a valid output slot.
        let status = unsafe {
            (self.vtable.call)(
                self.ptr,
                name.as_ptr(),
                name.len(),
                request.as_ptr(),
                request.len(),
                &mut out,
            )
        };
        take_answer(self.vtable, status, out, name)
    }
}

/// Copies a plugin's answer and hands its buffer back to it.
fn take_answer(
    vtable: &HandlerVtable,
    status: i32,
    out: Buffer,
    name: &str,
) -> HandlerResult<Vec<u8>> {
    // SAFETY: the plugin filled `out` with a buffer it allocated (or left it
    // empty); it stays valid until free_buffer below.
    let bytes = unsafe { out.as_slice() }.to_vec();
    if !out.ptr.is_null() {
        // SAFETY: the buffer came from this plugin and is freed once.
        unsafe { (vtable.free_buffer)(out) };
    }
    match status {
        STATUS_OK => Ok(bytes),
        STATUS_ERROR => Err(
            match crius_shim_api::types::Error::decode(bytes.as_slice()) {
                Ok(error) => HandlerError::from_wire(error),
                Err(e) => HandlerError::internal(format!(
                    "the plugin's {name} error is not valid protobuf: {e}"
                )),
            },
        ),
        other => Err(HandlerError::internal(format!(
            "the plugin answered {name} with unknown status {other}"
        ))),
    }
}

/// A handler living in a plugin library.
pub struct PluginHandler {
    name: String,
    path: PathBuf,
    instance: Instance,
    info: InfoResponse,
}

impl std::fmt::Debug for PluginHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandler")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

/// Checks that `path` (after resolving symlinks) and its directory belong to
/// root and are not writable by group or others.
pub fn check_ownership(path: &Path) -> Result<PathBuf, PluginError> {
    let insecure = |reason: String| PluginError::Insecure {
        path: path.to_path_buf(),
        reason,
    };
    let real =
        std::fs::canonicalize(path).map_err(|e| insecure(format!("cannot resolve it: {e}")))?;
    let meta = std::fs::metadata(&real)
        .map_err(|e| insecure(format!("cannot stat {}: {e}", real.display())))?;
    if !meta.is_file() {
        return Err(insecure(format!(
            "{} is not a regular file",
            real.display()
        )));
    }
    let dir = real.parent().unwrap_or(Path::new("/"));
    let dir_meta = std::fs::metadata(dir)
        .map_err(|e| insecure(format!("cannot stat {}: {e}", dir.display())))?;
    for (what, p, m) in [
        ("the file", &real, &meta),
        ("its directory", &dir.to_path_buf(), &dir_meta),
    ] {
        if m.uid() != 0 {
            return Err(insecure(format!(
                "{what} {} is owned by uid {}, not root",
                p.display(),
                m.uid()
            )));
        }
        let mode = m.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(insecure(format!(
                "{what} {} is writable by {} (mode {mode:04o})",
                p.display(),
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                }
            )));
        }
    }
    Ok(real)
}

/// Loads the library at `path`, creates its handler with `params` and asks
/// it for its Info.
pub async fn load(path: &Path, params: HandlerParams) -> Result<PluginHandler, PluginError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || load_blocking(&path, params))
        .await
        .unwrap_or_else(|e| {
            Err(PluginError::Open {
                path: PathBuf::new(),
                message: format!("the loading task failed: {e}"),
            })
        })
}

fn load_blocking(path: &Path, params: HandlerParams) -> Result<PluginHandler, PluginError> {
    let real = check_ownership(path)?;
    let open_error = |message: String| PluginError::Open {
        path: path.to_path_buf(),
        message,
    };
    // SAFETY: loading runs the library's initializers with our privileges;
    // check_ownership made sure only root could have put this code there.
    let library =
        unsafe { libloading::Library::new(&real) }.map_err(|e| open_error(e.to_string()))?;
    // The library is never unloaded (see the module docs).
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol is declared with the ABI's entry type; a library
    // exporting that name with another type would break the ABI contract.
    let entry = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL.as_bytes()) }.map_err(|_| {
        PluginError::MissingSymbol {
            path: path.to_path_buf(),
        }
    })?;
    // SAFETY: calling the entry point per the ABI; it only returns a pointer.
    let header = unsafe { entry() };
    if header.is_null() {
        return Err(open_error(format!(
            "`{ENTRY_SYMBOL}` returned a null vtable"
        )));
    }
    // SAFETY: every ABI version starts with the frozen VtableHeader.
    let header_value = unsafe { header.read() };
    if header_value.abi_version != ABI_VERSION {
        return Err(PluginError::AbiVersion {
            path: path.to_path_buf(),
            found: header_value.abi_version,
            expected: ABI_VERSION,
        });
    }
    if header_value.struct_size < VTABLE_SIZE {
        return Err(PluginError::VtableSize {
            path: path.to_path_buf(),
            found: header_value.struct_size,
            expected: VTABLE_SIZE,
        });
    }
    // SAFETY: version and size say this is (at least) a version-1 vtable; it
    // is a static of a library that is never unloaded.
    let vtable: &'static HandlerVtable = unsafe { &*header.cast::<HandlerVtable>() };

    let name = params.name.clone();
    let json = params.to_json();
    let mut ptr: *mut c_void = std::ptr::null_mut();
    let mut out = Buffer::empty();
    // SAFETY: per the CreateFn contract: the params slice outlives the call,
    // `ptr` and `out` are valid output slots.
    let status = unsafe { (vtable.create)(json.as_ptr(), json.len(), &mut ptr, &mut out) };
    let created = take_answer(vtable, status, out, "create");
    if let Err(error) = created {
        return Err(PluginError::Create {
            path: path.to_path_buf(),
            name,
            error,
        });
    }
    if ptr.is_null() {
        let error = HandlerError::internal("create succeeded but returned no instance");
        return Err(PluginError::Create {
            path: path.to_path_buf(),
            name,
            error,
        });
    }
    let instance = Instance { vtable, ptr };
    let info = instance
        .call(method::INFO, &[])
        .and_then(|bytes| wire::decode_response::<InfoResponse>(method::INFO, &bytes))
        .map_err(|error| PluginError::Info {
            path: path.to_path_buf(),
            name: name.clone(),
            error,
        })?;
    info!(handler = %name, plugin = %real.display(), version = %info.version, abi = ABI_VERSION, "plugin loaded");
    Ok(PluginHandler {
        name,
        path: path.to_path_buf(),
        instance,
        info,
    })
}

impl PluginHandler {
    /// Version the plugin reports.
    pub fn version(&self) -> &str {
        &self.info.version
    }

    async fn rpc<Req: Message, Resp: Message + Default>(
        &self,
        name: &'static str,
        request: &Req,
    ) -> HandlerResult<Resp> {
        let bytes = wire::encode(request);
        let instance = self.instance;
        let answer = tokio::task::spawn_blocking(move || instance.call(name, &bytes))
            .await
            .map_err(|e| {
                HandlerError::internal(format!(
                    "handler {}: the call to {name} failed: {e}",
                    self.name
                ))
            })??;
        wire::decode_response(name, &answer)
    }

    async fn rpc_unit<Req: Message>(&self, name: &'static str, request: &Req) -> HandlerResult<()> {
        self.rpc::<Req, Empty>(name, request).await.map(|_| ())
    }
}

#[async_trait]
impl RuntimeHandler for PluginHandler {
    fn name(&self) -> &str {
        &self.name
    }
    fn capabilities(&self) -> Capabilities {
        self.info.capabilities.unwrap_or_default()
    }
    async fn check_ready(&self) -> HandlerResult<()> {
        self.rpc_unit(method::CHECK_READY, &Empty {}).await
    }
    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        self.rpc(method::RUN_SANDBOX, &req).await
    }
    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.rpc_unit(method::STOP_SANDBOX, &req).await
    }
    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.rpc_unit(method::REMOVE_SANDBOX, &req).await
    }
    async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
        self.rpc(method::SANDBOX_STATUS, &req).await
    }
    async fn restore_sandbox(
        &self,
        req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        self.rpc(method::RESTORE_SANDBOX, &req).await
    }
    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        self.rpc(method::CREATE_CONTAINER, &req).await
    }
    async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.rpc_unit(method::START_CONTAINER, &req).await
    }
    async fn stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        self.rpc_unit(method::STOP_CONTAINER, &req).await
    }
    async fn remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.rpc_unit(method::REMOVE_CONTAINER, &req).await
    }
    async fn container_status(&self, req: ContainerRef) -> HandlerResult<ContainerStatusResponse> {
        self.rpc(method::CONTAINER_STATUS, &req).await
    }
    async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
        self.rpc(method::EXEC_SYNC, &req).await
    }
    async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        self.rpc_unit(method::UPDATE_CONTAINER_RESOURCES, &req)
            .await
    }
    async fn reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        self.rpc_unit(method::REOPEN_CONTAINER_LOG, &req).await
    }
    async fn container_stats(&self, req: ContainerRef) -> HandlerResult<ContainerStatsResponse> {
        self.rpc(method::CONTAINER_STATS, &req).await
    }
    async fn exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        self.rpc(method::EXEC, &req).await
    }
    async fn attach(&self, req: AttachRequest) -> HandlerResult<()> {
        self.rpc_unit(method::ATTACH, &req).await
    }
    async fn resize_pty(&self, req: ResizePtyRequest) -> HandlerResult<()> {
        self.rpc_unit(method::RESIZE_PTY, &req).await
    }
    async fn kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        self.rpc_unit(method::KILL_PROCESS, &req).await
    }
    async fn wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        self.rpc(method::WAIT, &req).await
    }
    async fn port_forward(&self, req: PortForwardRequest) -> HandlerResult<()> {
        self.rpc_unit(method::PORT_FORWARD, &req).await
    }
    async fn sandbox_stats(&self, req: SandboxRef) -> HandlerResult<SandboxStatsResponse> {
        self.rpc(method::SANDBOX_STATS, &req).await
    }
    async fn update_sandbox_resources(
        &self,
        req: UpdateSandboxResourcesRequest,
    ) -> HandlerResult<()> {
        self.rpc_unit(method::UPDATE_SANDBOX_RESOURCES, &req).await
    }
}

/// Convenience for the registry: the loaded handler as a trait object.
pub async fn load_handler(
    path: &Path,
    params: HandlerParams,
) -> Result<Arc<dyn RuntimeHandler>, PluginError> {
    Ok(Arc::new(load(path, params).await?))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file_in(dir: &Path, mode: u32) -> PathBuf {
        let path = dir.join("libx.so");
        std::fs::write(&path, b"not really a library").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn refusal(path: &Path) -> String {
        match check_ownership(path) {
            Err(err @ PluginError::Insecure { .. }) => err.to_string(),
            other => panic!("{} should be refused: {other:?}", path.display()),
        }
    }

    #[test]
    fn ownership_and_modes_are_checked_before_loading() {
        // Files must be root-owned to pass the checks.
        if !crius_testkit::require_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ok = file_in(dir.path(), 0o755);
        assert_eq!(
            check_ownership(&ok).unwrap(),
            std::fs::canonicalize(&ok).unwrap()
        );

        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(
            refusal(&ok).contains("writable by everyone (mode 0757)"),
            "{}",
            refusal(&ok)
        );
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(
            refusal(&ok).contains("writable by its group"),
            "{}",
            refusal(&ok)
        );

        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(refusal(&ok).contains("its directory"), "{}", refusal(&ok));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

        std::os::unix::fs::chown(&ok, Some(65534), None).unwrap();
        assert!(
            refusal(&ok).contains("owned by uid 65534, not root"),
            "{}",
            refusal(&ok)
        );
        std::os::unix::fs::chown(&ok, Some(0), None).unwrap();

        // A symlink is judged by what it points to.
        let link = dir.path().join("link.so");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        check_ownership(&link).unwrap();

        assert!(refusal(&dir.path().join("missing.so")).contains("cannot resolve it"));
        assert!(refusal(dir.path()).contains("is not a regular file"));
    }

    #[tokio::test]
    async fn a_file_that_is_no_library_is_a_clear_error() {
        // Files must be root-owned to pass the checks.
        if !crius_testkit::require_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = file_in(dir.path(), 0o644);
        let err = load(&path, HandlerParams::default()).await.unwrap_err();
        assert!(matches!(err, PluginError::Open { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot load plugin {}", path.display())),
            "{err}"
        );
    }
}
