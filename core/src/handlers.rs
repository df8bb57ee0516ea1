//! Registered runtime handlers, by name.
