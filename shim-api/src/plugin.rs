//! Plugin side of the C ABI (feature `plugin`): what [`crate::export_handler!`]
//! expands to. Each instance owns a tokio runtime; the core's calls block
//! (it makes them from its blocking thread pool) while that runtime drives
//! the handler's future. Panics never cross the ABI: they are caught here and
//! answered as `Internal` errors.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::abi::{Buffer, STATUS_ERROR, STATUS_OK};
use crate::wire::{self, panic_message};
use crate::{HandlerError, HandlerParams, HandlerResult, RuntimeHandler};

/// One handler created by the core.
struct Instance {
    handler: Arc<dyn RuntimeHandler>,
    runtime: tokio::runtime::Runtime,
    version: &'static str,
}

/// Worker threads of each instance's runtime: enough for background tasks
/// (monitors, timers) to progress between calls, which run on the core's
/// threads.
const WORKER_THREADS: usize = 2;

/// Writes `result` to `out` and returns the matching status.
///
/// # Safety
/// `out` must be valid for writes.
unsafe fn answer(result: HandlerResult<Vec<u8>>, out: *mut Buffer) -> i32 {
    let (status, bytes) = match result {
        Ok(bytes) => (STATUS_OK, bytes),
        Err(err) => (STATUS_ERROR, wire::encode(&err.to_wire())),
    };
    // SAFETY: per this function's contract.
    unsafe { out.write(Buffer::from_vec(bytes)) };
    status
}

/// # Safety
/// `ptr` must be null or point to `len` readable bytes that outlive the use.
unsafe fn borrowed<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: per this function's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// `create` of the vtable for handler type `H`, built by `ctor`.
///
/// # Safety
/// The ABI contract of [`crate::abi::CreateFn`].
pub unsafe fn create<H, F>(
    ctor: F,
    version: &'static str,
    params: *const u8,
    params_len: usize,
    out_instance: *mut *mut c_void,
    out: *mut Buffer,
) -> i32
where
    H: RuntimeHandler + 'static,
    F: FnOnce(HandlerParams) -> HandlerResult<H>,
{
    // SAFETY: the core passes a buffer valid for the duration of the call.
    let params = unsafe { borrowed(params, params_len) };
    let result = catch_unwind(AssertUnwindSafe(|| -> HandlerResult<Instance> {
        let params: HandlerParams = serde_json::from_slice(params).map_err(|e| {
            HandlerError::invalid_argument(format!("invalid handler parameters: {e}"))
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name(format!("{}-plugin", params.name))
            .enable_all()
            .build()
            .map_err(|e| {
                HandlerError::internal(format!("cannot start the plugin's async runtime: {e}"))
            })?;
        // The constructor may spawn background tasks onto the runtime.
        let handler = {
            let _guard = runtime.enter();
            ctor(params)?
        };
        Ok(Instance {
            handler: Arc::new(handler),
            runtime,
            version,
        })
    }));
    let result = match result {
        Ok(result) => result,
        Err(panic) => Err(HandlerError::internal(format!(
            "the plugin panicked while creating its handler: {}",
            panic_message(&*panic)
        ))),
    };
    match result {
        Ok(instance) => {
            // SAFETY: the core passes a pointer valid for writes.
            unsafe { out_instance.write(Box::into_raw(Box::new(instance)).cast()) };
            // SAFETY: as above.
            unsafe { answer(Ok(Vec::new()), out) }
        }
        // SAFETY: as above.
        Err(err) => unsafe { answer(Err(err), out) },
    }
}

/// `call` of the vtable.
///
/// # Safety
/// The ABI contract of [`crate::abi::CallFn`]; `instance` comes from [`create`].
pub unsafe extern "C" fn call(
    instance: *mut c_void,
    method: *const u8,
    method_len: usize,
    request: *const u8,
    request_len: usize,
    out: *mut Buffer,
) -> i32 {
    // SAFETY: `instance` was made by `create` and is never freed while the
    // core may call (it never calls destroy).
    let instance = unsafe { &*(instance.cast_const().cast::<Instance>()) };
    // SAFETY: the core passes buffers valid for the duration of the call.
    let (method, request) =
        unsafe { (borrowed(method, method_len), borrowed(request, request_len)) };
    let method = String::from_utf8_lossy(method);
    let result = catch_unwind(AssertUnwindSafe(|| {
        instance.runtime.block_on(wire::dispatch(
            instance.handler.as_ref(),
            instance.version,
            &method,
            request,
        ))
    }));
    let result = result.unwrap_or_else(|panic| {
        Err(HandlerError::internal(format!(
            "handler {} panicked in {method}: {}",
            instance.handler.name(),
            panic_message(&*panic)
        )))
    });
    // SAFETY: the core passes an output slot valid for writes.
    unsafe { answer(result, out) }
}

/// `free_buffer` of the vtable.
///
/// # Safety
/// `buffer` must be one this plugin returned, freed once.
pub unsafe extern "C" fn free_buffer(buffer: Buffer) {
    // SAFETY: per this function's contract it came from Buffer::from_vec here.
    drop(unsafe { buffer.into_vec() });
}

/// `destroy` of the vtable: shuts the instance's runtime down.
///
/// # Safety
/// `instance` comes from [`create`] and is not used afterwards.
pub unsafe extern "C" fn destroy(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: per this function's contract.
    let instance = unsafe { Box::from_raw(instance.cast::<Instance>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || {
        let Instance {
            handler, runtime, ..
        } = *instance;
        drop(handler);
        runtime.shutdown_background();
    }));
}

/// Exports a [`RuntimeHandler`] as a crius plugin library.
///
/// ```ignore
/// crius_shim_api::export_handler!(MyHandler, MyHandler::new);
/// ```
///
/// `$ctor` is `fn(HandlerParams) -> HandlerResult<$ty>`; it runs inside the
/// plugin's tokio runtime. The crate must be built with
/// `crate-type = ["cdylib"]` and `crius-shim-api` feature `plugin`.
#[macro_export]
macro_rules! export_handler {
    ($ty:ty, $ctor:expr) => {
        const _: () = {
            unsafe extern "C" fn __crius_create(
                params: *const u8,
                params_len: usize,
                out_instance: *mut *mut ::std::ffi::c_void,
                out: *mut $crate::abi::Buffer,
            ) -> i32 {
                // SAFETY: the core upholds the CreateFn contract; forwarded as is.
                unsafe {
                    $crate::plugin::create::<$ty, _>(
                        $ctor,
                        env!("CARGO_PKG_VERSION"),
                        params,
                        params_len,
                        out_instance,
                        out,
                    )
                }
            }

            static __CRIUS_VTABLE: $crate::abi::HandlerVtable = $crate::abi::HandlerVtable {
                header: $crate::abi::VtableHeader {
                    abi_version: $crate::abi::ABI_VERSION,
                    struct_size: $crate::abi::VTABLE_SIZE,
                },
                create: __crius_create,
                call: $crate::plugin::call,
                free_buffer: $crate::plugin::free_buffer,
                destroy: $crate::plugin::destroy,
            };

            /// The plugin's entry point (see `crius_shim_api::abi`).
            #[unsafe(no_mangle)]
            pub extern "C" fn crius_handler_entry() -> *const $crate::abi::VtableHeader {
                &__CRIUS_VTABLE.header
            }
        };
    };
}
