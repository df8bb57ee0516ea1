//! The plugin C ABI: how the core calls a handler built as a shared library.
//!
//! A plugin exports one symbol, [`ENTRY_SYMBOL`], a function returning a
//! pointer to a static vtable. The vtable starts with a [`VtableHeader`]
//! whose layout is frozen for every ABI version, so the core can read the
//! version before it trusts anything else. For [`ABI_VERSION`] 2 the whole
//! vtable is a [`HandlerVtable`] (the layout of version 1; version 2 is the
//! handler contract version 2, whose messages and methods cross it).
//!
//! Requests and responses cross as protobuf-encoded messages of
//! `proto/handler/v1/handler.proto` (the [`crate::types`]); a failed call
//! returns [`STATUS_ERROR`] with an encoded [`crate::types::Error`]. Memory is
//! freed by the side that allocated it: inputs are borrowed by the plugin for
//! the duration of the call; output [`Buffer`]s are allocated by the plugin
//! and handed back to it through `free_buffer`.
//!
//! Rust authors never touch this module: [`crate::export_handler!`]
//! generates all of it from a [`crate::RuntimeHandler`] implementation.

use std::ffi::c_void;

/// Version of the vtable layout and calling conventions. Bumped on any
/// incompatible change; the core refuses plugins of another version.
pub const ABI_VERSION: u32 = 2;

/// Name of the exported entry point (without the trailing NUL). It stays the
/// same across ABI versions: the version is read from the vtable.
pub const ENTRY_SYMBOL: &str = "crius_handler_entry";

/// The entry point's type: returns a pointer to a vtable that lives as long
/// as the library is loaded (the core never unloads plugins).
pub type EntryFn = unsafe extern "C" fn() -> *const VtableHeader;

/// The call succeeded; the output buffer holds the encoded response.
pub const STATUS_OK: i32 = 0;
/// The call failed; the output buffer holds an encoded `types::Error`.
pub const STATUS_ERROR: i32 = 1;

/// Leading fields of every vtable version. Never changes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VtableHeader {
    /// The plugin's [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of` the plugin's whole vtable, header included. Within one ABI
    /// version fields are only ever appended, so a larger size is accepted
    /// (the core uses the fields it knows) and a smaller one is refused.
    pub struct_size: u32,
}

/// Bytes allocated by the plugin (a `Vec<u8>` taken apart) and returned to
/// it through [`HandlerVtable::free_buffer`].
#[repr(C)]
#[derive(Debug)]
pub struct Buffer {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl Buffer {
    /// No allocation; what the core passes in as the output slot.
    pub const fn empty() -> Self {
        Self {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    /// Hands a vector's allocation over the ABI.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        Self {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }

    /// Takes the allocation back.
    ///
    /// # Safety
    /// `self` must come from [`Buffer::from_vec`] in the same binary (same
    /// allocator) and not have been turned back into a vector before.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: per this function's contract the parts come from a Vec of
        // this binary's allocator that nobody else owns.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }

    /// The bytes, borrowed.
    ///
    /// # Safety
    /// `ptr` must be null or point to `len` initialized bytes that stay valid
    /// while the returned slice is used.
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: per this function's contract.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Creates a handler instance from JSON-encoded [`crate::HandlerParams`].
/// On success stores the instance in `*out_instance` and returns
/// [`STATUS_OK`]; on failure stores an encoded `types::Error` in `*out`.
pub type CreateFn = unsafe extern "C" fn(
    params: *const u8,
    params_len: usize,
    out_instance: *mut *mut c_void,
    out: *mut Buffer,
) -> i32;

/// Runs one method of the contract (`method` is its UTF-8 name as in the
/// proto service, e.g. `RunSandbox`) with an encoded request. Blocks until
/// the handler answers. May be called concurrently from many threads.
pub type CallFn = unsafe extern "C" fn(
    instance: *mut c_void,
    method: *const u8,
    method_len: usize,
    request: *const u8,
    request_len: usize,
    out: *mut Buffer,
) -> i32;

/// Frees a buffer the plugin returned.
pub type FreeBufferFn = unsafe extern "C" fn(buffer: Buffer);

/// Drops an instance. The core never unloads plugins and never calls it;
/// it exists so other hosts (tests) can.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);

/// The vtable of ABI versions 1 and 2 (same layout).
#[repr(C)]
#[derive(Debug)]
pub struct HandlerVtable {
    pub header: VtableHeader,
    pub create: CreateFn,
    pub call: CallFn,
    pub free_buffer: FreeBufferFn,
    pub destroy: DestroyFn,
}

/// `struct_size` of this crate's [`HandlerVtable`].
pub const VTABLE_SIZE: u32 = std::mem::size_of::<HandlerVtable>() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_round_trip() {
        let buffer = Buffer::from_vec(b"hello".to_vec());
        // SAFETY: the buffer was just made from a live vector.
        assert_eq!(unsafe { buffer.as_slice() }, b"hello");
        // SAFETY: made by from_vec above, taken back once.
        assert_eq!(unsafe { buffer.into_vec() }, b"hello");
        // SAFETY: a null buffer reads as empty.
        assert!(unsafe { Buffer::empty().into_vec() }.is_empty());
    }

    #[test]
    fn header_layout_is_frozen() {
        assert_eq!(std::mem::size_of::<VtableHeader>(), 8);
        assert_eq!(std::mem::offset_of!(HandlerVtable, header), 0);
        assert_eq!(VTABLE_SIZE as usize, 8 + 4 * std::mem::size_of::<usize>());
    }
}
